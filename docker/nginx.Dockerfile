# nginx from Debian's package, for machines with no image registry (these ones): `make
# image` builds it as localhost/rnnlm-nginx from the local Debian base. Everywhere
# else docker-compose.yml uses the official nginx:1.27-alpine. Like the official image,
# it serves /etc/nginx/conf.d/*.conf (Debian's own default site is removed).
ARG DEBIAN=debian:bookworm-slim
FROM ${DEBIAN}
RUN apt-get update && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
