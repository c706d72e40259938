// The Java-driver load generator of benchmarks/bench_peers.py for Cassandra: the same closed
// 50/50 loop as benchmarks/peer_load.py (uniform keys k0..k{keys-1}, 100-byte values, `inFlight`
// requests outstanding, each issued when the previous one of its chain answers), with the
// DataStax Java driver 3.12 that cassandra-all ships with, prepared statements, QUORUM,
// token-aware routing. scripts/peers.sh compiles it into .cache/peers/cassandra-<version>/loadgen.
//
//   java -cp LOADGEN:LIB/* CassandraLoad HOSTS preload KEYS IN_FLIGHT
//   java -cp LOADGEN:LIB/* CassandraLoad HOSTS run KEYS IN_FLIGHT WARMUP_S DURATION_S SEED
//
// `run` prints START when the measured window opens (after the warm-up) and one JSON line when
// it closes, so that the caller reads the servers' CPU at the same two moments.
import com.datastax.driver.core.BoundStatement;
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.ConsistencyLevel;
import com.datastax.driver.core.HostDistance;
import com.datastax.driver.core.PoolingOptions;
import com.datastax.driver.core.PreparedStatement;
import com.datastax.driver.core.ProtocolVersion;
import com.datastax.driver.core.QueryOptions;
import com.datastax.driver.core.ResultSetFuture;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.policies.DCAwareRoundRobinPolicy;
import com.datastax.driver.core.policies.TokenAwarePolicy;
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;

public final class CassandraLoad {
    private static final ByteBuffer VALUE = ByteBuffer.wrap(new byte[100]);

    static {
        Arrays.fill(VALUE.array(), (byte) 'v');
    }

    private static ByteBuffer key(long i) {
        return ByteBuffer.wrap(("k" + i).getBytes(StandardCharsets.US_ASCII));
    }

    /** One chain of requests: one outstanding at a time, latencies kept in its own array. */
    private static final class Chain {
        final SplittableRandom random;
        long[] latencies = new long[1 << 14];
        int count;
        long errors;

        Chain(long seed) {
            random = new SplittableRandom(seed);
        }

        void record(long nanos) {
            if (count == latencies.length) {
                latencies = Arrays.copyOf(latencies, count * 2);
            }
            latencies[count++] = nanos;
        }
    }

    public static void main(String[] args) throws Exception {
        String[] hosts = args[0].split(",");
        String mode = args[1];
        int keys = Integer.parseInt(args[2]);
        int inFlight = Integer.parseInt(args[3]);
        PoolingOptions pooling = new PoolingOptions()
                .setConnectionsPerHost(HostDistance.LOCAL, 1, 1)
                .setMaxRequestsPerConnection(HostDistance.LOCAL, 2048);
        try (Cluster cluster = Cluster.builder()
                .addContactPoints(hosts)
                .withProtocolVersion(ProtocolVersion.V4)
                .withPoolingOptions(pooling)
                .withLoadBalancingPolicy(new TokenAwarePolicy(DCAwareRoundRobinPolicy.builder().build()))
                .withQueryOptions(new QueryOptions().setConsistencyLevel(ConsistencyLevel.QUORUM))
                .withoutJMXReporting()
                .build();
                Session session = cluster.connect()) {
            session.execute("CREATE KEYSPACE IF NOT EXISTS bench WITH replication = "
                    + "{'class': 'SimpleStrategy', 'replication_factor': 3}");
            session.execute("CREATE TABLE IF NOT EXISTS bench.kv (k blob PRIMARY KEY, v blob)");
            PreparedStatement put = session.prepare("INSERT INTO bench.kv (k, v) VALUES (?, ?)");
            PreparedStatement get = session.prepare("SELECT v FROM bench.kv WHERE k = ?");
            if (mode.equals("preload")) {
                preload(session, put, keys, inFlight);
                System.out.println("{\"preloaded\":" + keys + "}");
                return;
            }
            double warmup = Double.parseDouble(args[4]);
            double duration = Double.parseDouble(args[5]);
            long seed = Long.parseLong(args[6]);
            phase(session, put, get, keys, inFlight, warmup, seed);
            com.sun.management.OperatingSystemMXBean os =
                    (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
            System.out.println("START");
            System.out.flush();
            long cpu = os.getProcessCpuTime();
            long started = System.nanoTime();
            Chain[] chains = phase(session, put, get, keys, inFlight, duration, seed + 7919);
            double seconds = (System.nanoTime() - started) / 1e9;
            double clientCpu = (os.getProcessCpuTime() - cpu) / 1e9;
            report(chains, seconds, clientCpu);
        }
    }

    private static void preload(Session session, PreparedStatement put, int keys, int inFlight)
            throws InterruptedException {
        Semaphore slots = new Semaphore(inFlight);
        ConcurrentLinkedQueue<Long> failed = new ConcurrentLinkedQueue<>();
        for (long i = 0; i < keys; i++) {
            slots.acquire();
            long k = i;
            ResultSetFuture f = session.executeAsync(put.bind(key(k), VALUE.duplicate())
                    .setConsistencyLevel(ConsistencyLevel.ONE));
            f.addListener(() -> {
                try {
                    f.getUninterruptibly();
                } catch (RuntimeException e) {
                    failed.add(k);
                }
                slots.release();
            }, Runnable::run);
        }
        slots.acquire(inFlight);
        // A write that timed out on a busy machine is written again, one at a time (the
        // benchmark needs every key present, not the preload's speed).
        for (Long k : failed) {
            for (int attempt = 1; ; attempt++) {
                try {
                    session.execute(put.bind(key(k), VALUE.duplicate()));
                    break;
                } catch (RuntimeException e) {
                    if (attempt == 5) {
                        throw e;
                    }
                }
            }
        }
    }

    private static Chain[] phase(Session session, PreparedStatement put, PreparedStatement get,
            int keys, int inFlight, double seconds, long seed) throws InterruptedException {
        long deadline = System.nanoTime() + (long) (seconds * 1e9);
        CountDownLatch finished = new CountDownLatch(inFlight);
        Chain[] chains = new Chain[inFlight];
        for (int i = 0; i < inFlight; i++) {
            chains[i] = new Chain(seed * 1000 + i);
            issue(session, put, get, keys, chains[i], deadline, finished);
        }
        finished.await();
        return chains;
    }

    private static void issue(Session session, PreparedStatement put, PreparedStatement get,
            int keys, Chain chain, long deadline, CountDownLatch finished) {
        if (System.nanoTime() >= deadline) {
            finished.countDown();
            return;
        }
        ByteBuffer k = key(chain.random.nextInt(keys));
        BoundStatement statement = chain.random.nextBoolean()
                ? put.bind(k, VALUE.duplicate()) : get.bind(k);
        long started = System.nanoTime();
        ResultSetFuture f = session.executeAsync(statement);
        f.addListener(() -> {
            try {
                f.getUninterruptibly();
                chain.record(System.nanoTime() - started);
            } catch (RuntimeException e) {
                chain.errors++;
            }
            issue(session, put, get, keys, chain, deadline, finished);
        }, Runnable::run);
    }

    private static void report(Chain[] chains, double seconds, double clientCpu) {
        int total = 0;
        long errors = 0;
        for (Chain c : chains) {
            total += c.count;
            errors += c.errors;
        }
        long[] all = new long[total];
        int at = 0;
        for (Chain c : chains) {
            System.arraycopy(c.latencies, 0, all, at, c.count);
            at += c.count;
        }
        Arrays.sort(all);
        System.out.printf("{\"requests\":%d,\"errors\":%d,\"seconds\":%.3f,\"p50_us\":%d,"
                + "\"p99_us\":%d,\"client_cpu_s\":%.3f}%n", total, errors, seconds,
                rank(all, 0.50) / 1000, rank(all, 0.99) / 1000, clientCpu);
    }

    private static long rank(long[] sorted, double fraction) {
        if (sorted.length == 0) {
            return -1;
        }
        int r = (int) Math.max(1, Math.ceil(sorted.length * fraction));
        return sorted[r - 1];
    }
}
