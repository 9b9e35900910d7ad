#!/bin/sh
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"  # the Compose network, with the password
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432} -k /tmp" -w start >/dev/null
    createdb -h /tmp -p "${PGPORT:-5432}" -U "$POSTGRES_USER" "$POSTGRES_DB"
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses="${POSTGRES_LISTEN_ADDRESSES:-*}" -p "${PGPORT:-5432}" -k /tmp
