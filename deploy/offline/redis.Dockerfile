# Where no registry can be reached: Debian's redis-server on the base from deploy/build-base-image.sh, in place of
# the official Redis image (see README, "Without a registry").
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["redis-server"]
