# A local stand-in for the official nginx image that docker-compose.yml's `proxy` names, for
# sites that reach no image registry: Debian bookworm's nginx on a debootstrapped minbase, with
# the official image's template step (nginx-entrypoint.sh) and its logs to stdout and stderr.
# scripts/docker-e2e builds it (context: this folder) and tags it with compose's image name.
ARG BASE=sbir-local/debian:bookworm-minbase
FROM ${BASE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008 (apt versions): the debootstrapped suite fixes them, as the official image's tag does.
# gettext-base: envsubst; wget: compose's healthcheck (busybox's in the official alpine image).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx gettext-base wget \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && mkdir -p /etc/nginx/templates \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
COPY nginx-entrypoint.sh /docker-entrypoint.sh
ENTRYPOINT ["/docker-entrypoint.sh"]
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
