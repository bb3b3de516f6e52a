# syntax=docker/dockerfile:1
#
# Shipgate container image.
#
#   docker build -t shipgate .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=postgres://... shipgate
#
# Migrations (migrations/), templates (templates/) and static assets (static/)
# are embedded into the binary at compile time, so the runtime image holds only
# the binary.

# ---------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

WORKDIR /src

ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
# The demo embeds examples/demo.yaml; the binary crate declares the end-to-end tests in tests/.
COPY examples ./examples
COPY tests ./tests

# The cache mounts keep the crates.io registry and target/ between builds
# (BuildKit); the binary is copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shipgate \
 && install -D -m 0755 target/release/shipgate /out/shipgate

# ---------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user; /var/lib/shipgate is its data dir (a generated master key
# lives there when SHIPGATE_MASTER_KEY is unset). A named volume mounted there
# starts out with this ownership.
RUN groupadd --system shipgate \
 && useradd --system --gid shipgate --home-dir /var/lib/shipgate \
      --shell /usr/sbin/nologin shipgate \
 && install -d -o shipgate -g shipgate -m 0700 /var/lib/shipgate

COPY --from=builder /out/shipgate /usr/local/bin/shipgate

ENV SHIPGATE_LISTEN=0.0.0.0:8080 \
    SHIPGATE_DATA_DIR=/var/lib/shipgate

USER shipgate
WORKDIR /var/lib/shipgate

EXPOSE 8080

# `shipgate healthcheck` GETs /healthz on SHIPGATE_LISTEN and exits 0 or 1,
# so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/shipgate", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/shipgate"]
CMD ["serve"]
