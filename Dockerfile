# ledgerd's image: ledgerd (the entrypoint) and ledgerctl, static, on a
# distroless base with no shell, running as the non-root user 65532.
#
#   docker build -t ledgerd .
#   docker run --rm -p 4222:4222 -e LEDGER_NATS_LISTEN=0.0.0.0:4222 ledgerd
#
# deploy/k8s runs it on Kubernetes (docs/kubernetes.md).

ARG GO_VERSION=1.26
FROM golang:${GO_VERSION} AS build
WORKDIR /src
# The modules first, so that a change of the sources reuses their layer.
COPY go.mod go.sum ./
RUN go mod download
# .git comes along (see .dockerignore): --version and `ledgerctl status`
# then show the commit the image was built from.
COPY . .
# CGO_ENABLED=0: nothing in ledgerd needs cgo (pebble then uses its pure-Go
# zstd), and a static binary runs on an image without libc.
RUN CGO_ENABLED=0 go build -buildvcs=auto -trimpath -ldflags="-s -w" \
    -o /out/ ./cmd/ledgerd ./cmd/ledgerctl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ledgerd /out/ledgerctl /usr/local/bin/
USER 65532:65532
# ledgerd's default --data-dir is ./data: the user's home is writable.
WORKDIR /home/nonroot
# NATS clients, NATS cluster routes, Raft, operator HTTP (the ports that
# deploy/k8s gives them; ledgerd's own defaults listen on 127.0.0.1).
EXPOSE 4222 6222 7400 8081
ENTRYPOINT ["/usr/local/bin/ledgerd"]
