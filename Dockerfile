# One image for a LimeDB node (`limedb serve`) and the operator (`limedb-operator`).
# Non-root (uid 10001), no shell needed at runtime beyond /bin/sh for the node entrypoint,
# and a read-only root filesystem works: data lives in /data, scratch in /tmp (emptyDir).
#
# BASE_IMAGE: any Debian-like image with python3 (>= 3.11, with venv) as `python`, groupadd and
# useradd. `make image` (scripts/image.sh) builds one from Debian's packages where no registry
# is reachable; with Docker and a registry: docker build -t limedb:dev .

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
# The dependencies first, in a layer of their own: a change to the code alone reuses it.
RUN python -m venv /opt/limedb \
 && /opt/limedb/bin/pip install --upgrade pip \
 && /opt/limedb/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/limedb/bin/pip install -r /tmp/requirements.txt
COPY node ./node
COPY operator ./operator
RUN /opt/limedb/bin/pip install --no-deps .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="limedb" \
      org.opencontainers.image.description="LimeDB node and Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 limedb \
 && useradd --system --uid 10001 --gid limedb --home-dir /data --shell /usr/sbin/nologin limedb \
 && mkdir -p /data \
 && chown limedb:limedb /data
COPY --from=build /opt/limedb /opt/limedb
ENV PATH=/opt/limedb/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIMEDB_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8484 9484 6379
ENTRYPOINT ["limedb"]
CMD ["serve"]
