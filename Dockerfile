# syntax=docker/dockerfile:1
#
# aws-vpc-cni-rs image: both binaries and the conf files, for the aws-node DaemonSet in
# conf/aws-k8s-cni.yaml. Build: docker build -t ghcr.io/example/aws-vpc-cni-rs:v0.1.0 .
#
# Layout of the final image (all under /app, owned by root, read-only at run time):
#   /app/ipamd              the daemon; also `ipamd probe`, `ipamd status`, `ipamd install-cni`
#   /app/cni/bin/aws-cni    the CNI plugin, static (musl); `ipamd install-cni` copies every file of
#                           /app/cni/bin into the host's /opt/cni/bin
#   /app/cni/bin/egress-cni the chained plugin giving IPv6 pods IPv4 egress, static (musl)
#   /app/cni/bin/{bandwidth,host-local,loopback,portmap,tuning}
#                           Debian's upstream plugins, as the reference's init image ships them:
#                           those the conflist chains, and loopback, which containerd requires
#   /app/conf/              10-aws.conflist (what ipamd writes), aws-k8s-cni.yaml, eniconfig-crd.yaml,
#                           kustomization.yaml, iam-policy.json
#
# The build stage runs `make image-binaries`, the same target CI runs (.ci/run), with the pinned
# toolchain and --locked; it stages the upstream plugins from /usr/lib/cni, so this stage
# installs containernetworking-plugins (only those five binaries reach the final image).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# Not pinned (DL3008): bookworm's package only changes for security fixes, which the image
# should pick up on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends containernetworking-plugins \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make image-binaries

# glibc (ipamd links it dynamically) and the iptables commands: ipamd programs the SNAT, connmark
# and NodePort rules with iptables-restore and picks the backend the node already uses
# (iptables-nft or iptables-legacy, both shipped), as the reference's image does.
FROM docker.io/library/debian:bookworm-slim
# Not pinned (DL3008): bookworm's iptables only changes for security fixes, which the image
# should pick up on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
ARG VERSION=v0.1.0
LABEL org.opencontainers.image.title="aws-vpc-cni-rs" \
      org.opencontainers.image.description="Rust drop-in for the AWS VPC CNI: aws-cni and egress-cni plugins and ipamd node daemon" \
      org.opencontainers.image.source="https://github.com/example/aws-vpc-cni-rs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /src/target/image/ /app/
WORKDIR /app
# Non-root by default; the DaemonSet runs both containers as root (host paths, sysctls).
USER 65532:65532
ENTRYPOINT ["/app/ipamd"]
