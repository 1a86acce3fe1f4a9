# The image the operator deploys (`spec.image`): `kybctl` and nothing else.
#
#   docker build -t registry.example.com/kybctl:0.1.0 .
#
# Without a container engine, `tests/cluster/kybctl-image target/release/kybctl IMAGE OUT.tar` packs
# the same layout (README: "Building the image").

# Build: the release binary, with the dependency graph locked. Debian bookworm, like the final stage's
# libc.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kybctl \
 && strip target/release/kybctl

# Final: distroless (glibc, CA certificates, no shell, no package manager), as the numeric non-root
# user 65532 so `runAsNonRoot` can check it. Nothing in it is writable by that user; the pods mount
# the root filesystem read-only and give the process an emptyDir for /tmp.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kybctl /usr/local/bin/kybctl
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kybctl"]
CMD ["serve"]
