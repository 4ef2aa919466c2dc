#!/bin/sh
# Builds both images' binaries into the cache-mounted target/. Cargo judges
# freshness by file times, which cannot be trusted when the cache was last
# filled from another checkout (older files, newer artifacts): when the
# sources differ from the last build's, every workspace source is touched.
set -eu
sum=$(find proto agent controller test-support Cargo.toml Cargo.lock -type f | sort | xargs sha256sum | sha256sum)
if [ "$(cat target/.sources 2>/dev/null)" != "$sum" ]; then
  find proto agent controller test-support -name '*.rs' -exec touch {} +
fi
cargo build --release --locked --bin qdrant-agent --bin qdrant-operator
echo "$sum" > target/.sources
