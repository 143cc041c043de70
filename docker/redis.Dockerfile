# Redis from Debian's package, for machines with no image registry (these ones): `make
# image` builds it as localhost/rnnlm-redis from the local Debian base. Everywhere
# else docker-compose.yml uses the official redis:7-alpine.
ARG DEBIAN=debian:bookworm-slim
FROM ${DEBIAN}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--dir", "/data", "--protected-mode", "no"]
