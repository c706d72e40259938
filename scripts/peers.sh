#!/usr/bin/env bash
# Fetches the benchmark peers that are not Debian packages: Apache Cassandra (cassandra-all, with
# its runtime dependencies) from Maven Central, as tools/cassandra/pom.xml pins it, into
# .cache/peers/cassandra-<version>/lib. benchmarks/bench_peers.py runs it before starting
# Cassandra; Redis is Debian's redis-server (scripts/system-deps.sh).
#
# The jars are fetched again only when the pom (or this script) changes: a stamp records their
# hash, so a warm run spends well under a second here. Maven's own cache stays in ~/.m2.
# Prints the lib folder on its last line of standard output.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
POM="$ROOT/tools/cassandra/pom.xml"
VERSION="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$POM")"
OUT="$ROOT/.cache/peers/cassandra-$VERSION"
STAMP="$OUT/stamp"

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -n "$VERSION" ]] || die "no <cassandra.version> in $POM"
command -v java >/dev/null || die "java is not installed (Cassandra $VERSION needs a JDK 11 or 17)"
command -v mvn >/dev/null || die "mvn is not installed (it fetches cassandra-all from Maven Central)"

want="$(cat "$POM" "$0" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$OUT/lib/cassandra-all-$VERSION.jar" ]]; then
    log "cassandra $VERSION up to date in .cache/peers/cassandra-$VERSION"
    echo "$OUT/lib"
    exit 0
fi

rm -rf "$OUT"
mkdir -p "$OUT"
log "fetching cassandra-all $VERSION and its dependencies from Maven Central ..."
(cd "$ROOT/tools/cassandra" && mvn -B -q dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$OUT/lib.tmp") >&2 || die "mvn dependency:copy-dependencies failed (network?)"
mv "$OUT/lib.tmp" "$OUT/lib"
[[ -f "$OUT/lib/cassandra-all-$VERSION.jar" ]] || die "cassandra-all-$VERSION.jar was not fetched"
echo "$want" >"$STAMP"
log "cassandra $VERSION: $(ls "$OUT/lib" | wc -l) jars in .cache/peers/cassandra-$VERSION/lib"
echo "$OUT/lib"
