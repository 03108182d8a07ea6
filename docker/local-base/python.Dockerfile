# A local stand-in for python:3.11-slim-bookworm, for sites that reach no image registry:
# Debian bookworm's own Python 3.11 (python3.11, venv, pip's wheel) on a debootstrapped minbase.
# scripts/docker-e2e debootstraps BASE from the host's Debian mirror, imports it, builds this and
# tags the result with the name docker/Dockerfile.cpu's FROM gives, so that file builds unchanged.
# The context holds ca-certificates.crt: the CA bundle pip must trust at this site (the host's,
# e.g. a proxy's CA), named in /etc/pip.conf as the official image's pip would need it too.
ARG BASE=sbir-local/debian:bookworm-minbase
FROM ${BASE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008 (apt versions): the debootstrapped suite fixes them, as the official image's tag does.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
ENV LANG=C.UTF-8
CMD ["python3"]
