#!/usr/bin/env bash
# Fetches the benchmark peers that are not Debian packages: Apache Cassandra (cassandra-all, with
# its runtime dependencies) from Maven Central, as tools/cassandra/pom.xml pins it, into
# .cache/peers/cassandra-<version>/lib, and compiles the Java-driver load generator
# tools/cassandra/CassandraLoad.java against those jars into .cache/peers/cassandra-<version>/loadgen.
# benchmarks/bench_peers.py runs it before starting Cassandra; Redis is Debian's redis-server
# (scripts/system-deps.sh).
#
# The jars are fetched again only when the pom changes, the load generator is compiled again only
# when it changes: stamps record their hashes, so a warm run spends well under a second here.
# Maven's own cache stays in ~/.m2.
# Prints .cache/peers/cassandra-<version> (holding lib/ and loadgen/) on its last line of output.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
POM="$ROOT/tools/cassandra/pom.xml"
VERSION="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$POM")"
OUT="$ROOT/.cache/peers/cassandra-$VERSION"

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -n "$VERSION" ]] || die "no <cassandra.version> in $POM"
command -v java >/dev/null || die "java is not installed (Cassandra $VERSION needs a JDK 11 or 17)"
command -v javac >/dev/null || die "javac is not installed (it compiles the load generator)"
command -v mvn >/dev/null || die "mvn is not installed (it fetches cassandra-all from Maven Central)"

LOADGEN="$ROOT/tools/cassandra/CassandraLoad.java"
jars_want="$(sha256sum <"$POM" | cut -d' ' -f1)"
if [[ -f "$OUT/lib.stamp" && "$(cat "$OUT/lib.stamp")" == "$jars_want" \
      && -f "$OUT/lib/cassandra-all-$VERSION.jar" ]]; then
    log "cassandra $VERSION jars up to date in .cache/peers/cassandra-$VERSION/lib"
else
    rm -rf "$OUT"
    mkdir -p "$OUT"
    log "fetching cassandra-all $VERSION and its dependencies from Maven Central ..."
    (cd "$ROOT/tools/cassandra" && mvn -B -q dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$OUT/lib.tmp") >&2 || die "mvn dependency:copy-dependencies failed (network?)"
    mv "$OUT/lib.tmp" "$OUT/lib"
    [[ -f "$OUT/lib/cassandra-all-$VERSION.jar" ]] || die "cassandra-all-$VERSION.jar was not fetched"
    echo "$jars_want" >"$OUT/lib.stamp"
    log "cassandra $VERSION: $(ls "$OUT/lib" | wc -l) jars in .cache/peers/cassandra-$VERSION/lib"
fi

gen_want="$(cat "$POM" "$LOADGEN" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$OUT/loadgen.stamp" || "$(cat "$OUT/loadgen.stamp")" != "$gen_want" ]]; then
    log "compiling tools/cassandra/CassandraLoad.java ..."
    rm -rf "$OUT/loadgen"
    javac -nowarn -cp "$OUT/lib/*" -d "$OUT/loadgen" "$LOADGEN" >&2 \
        || die "javac tools/cassandra/CassandraLoad.java failed"
    echo "$gen_want" >"$OUT/loadgen.stamp"
fi
echo "$OUT"
