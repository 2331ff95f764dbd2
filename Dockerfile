# Build stage: compile the release binary. Migrations are embedded at compile time.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked && strip target/release/nexus-notify

# Runtime stage: the binary and CA certificates, run as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data notify \
    && mkdir -p /data && chown notify /data
COPY --from=build /src/target/release/nexus-notify /usr/local/bin/nexus-notify
USER notify
WORKDIR /data
ENV NOTIFY_BIND=0.0.0.0:8080 \
    NOTIFY_DATABASE_URL=sqlite:///data/nexus-notify.db
EXPOSE 8080
VOLUME ["/data"]
# A signing key is required: set NOTIFY_JWT_SECRET or NOTIFY_JWT_PUBLIC_KEY_FILE at run time.
ENTRYPOINT ["/usr/local/bin/nexus-notify"]
