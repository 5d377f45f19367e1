# Portcullis: multi-stage build.
#   docker build -t portcullis .
#   docker run --rm -p 8080:8080 -p 8443:8443 -p 9901:9901 \
#     -v "$PWD/prod.yaml:/etc/portcullis/gateway.yaml:ro" \
#     -v "$PWD/tls:/etc/portcullis/tls:ro" portcullis
# The bundled gateway.yaml is the demo config: it binds 127.0.0.1, which is not
# reachable from outside the container, and names dev certificates the image does
# not contain. Mount a config that binds 0.0.0.0, and your certificates (paths in
# the config are relative to its directory). Certificate files may be replaced
# in the mounted directory while running: they are reloaded.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/portcullis /usr/local/bin/portcullis

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin portcullis
COPY --from=build /usr/local/bin/portcullis /usr/local/bin/portcullis
COPY gateway.yaml /etc/portcullis/gateway.yaml
USER portcullis
EXPOSE 8080 8443 9901
# SIGTERM starts a graceful drain; give `docker stop -t` more than
# drain_delay + drain_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["portcullis"]
CMD ["run", "--config", "/etc/portcullis/gateway.yaml"]
