# Where no registry can be reached: Debian's PostgreSQL 15 on the bookworm base from deploy/build-base-image.sh, in
# place of the official image, with the parts of its entrypoint that compose.yaml uses (POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD_FILE, PGPORT; POSTGRES_LISTEN_ADDRESSES, default *). See README, "Without a registry".
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends postgresql && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
