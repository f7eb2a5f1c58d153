# datalayer-sidecar as a sidecar container.
#
#   docker build -t datalayer-sidecar .
#   docker run --rm -e DATALAYER_SIDECAR_UPSTREAM_URL=https://literal.internal \
#       -v sidecar-spool:/var/lib/datalayer-sidecar datalayer-sidecar
#
# Config is read from /etc/datalayer-sidecar/sidecar.toml (the shipped
# config/sidecar.toml); mount your own there, or override keys with
# DATALAYER_SIDECAR_<SECTION>_<KEY> environment variables.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# .cargo/config.toml carries build flags for the allocator and SQLite, and
# .cargo/ordered-cc with .cargo/text-order.txt the layout of the machine code
# (see build.rs).
COPY .cargo ./.cargo
COPY src ./src
# Keep this the same command CI runs (.ci/run, "release build"): no Docker
# engine runs on our CI machines, so CI proves this step by running it bare.
RUN cargo build --release --locked --bin datalayer-sidecar
# The spool's directory, owned by distroless's nonroot user (65532): a named
# volume mounted there starts with this owner, so the sidecar can create its
# store in it (Docker copies an image directory's ownership into a new
# volume; distroless has no shell to make it later).
RUN mkdir -p /out/spool && chown 65532:65532 /out/spool && chmod 0700 /out/spool

# Distroless: glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/datalayer-sidecar /usr/local/bin/datalayer-sidecar
COPY config/sidecar.toml /etc/datalayer-sidecar/sidecar.toml
COPY --from=build --chown=65532:65532 /out/spool /var/lib/datalayer-sidecar
ENV DATALAYER_SIDECAR_CONFIG=/etc/datalayer-sidecar/sidecar.toml \
    DATALAYER_SIDECAR_SPOOL_PATH=/var/lib/datalayer-sidecar/spool.sqlite3
# The spool lives here (0600 files, owned by the non-root user).
VOLUME ["/var/lib/datalayer-sidecar"]
USER nonroot:nonroot
# 8787: the app's LITERAL_API_URL. 9901: admin (/healthz, /readyz, /metrics).
EXPOSE 8787 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/datalayer-sidecar", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/datalayer-sidecar"]
