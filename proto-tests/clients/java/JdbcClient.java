// Real-client protocol checks with pgJDBC.
//
// Run (source launch, no build tool):
//   java -cp /usr/share/java/postgresql.jar proto-tests/clients/java/JdbcClient.java
//
// The connection comes only from the libpq environment variables PGHOST,
// PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT, turned
// into pgJDBC URL properties here. Prints one line per check: "ok <name>" or
// "FAIL <name>: <details>". Exits 0 only when every check passed.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Objects;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PGobject;

public class JdbcClient {
    static final int GLOBAL_TIMEOUT_S = 55;
    static final String SUFFIX = Long.toString(Math.abs(new Random().nextLong()), 36);
    static final String T = "java_" + SUFFIX;
    static final String[] TABLES = {T + "_fk", T + "_meta", T + "_tx", T + "_copy"};
    static boolean failed = false;

    // ------------------------------------------------------------ helpers

    interface Check {
        void run() throws Exception;
    }

    static class CheckFailed extends Exception {
        CheckFailed(String msg) {
            super(msg);
        }
    }

    static boolean check(String name, Check c) {
        boolean passed = false;
        try {
            c.run();
            System.out.println("ok " + name);
            passed = true;
        } catch (CheckFailed e) {
            fail(name, e.getMessage());
        } catch (Throwable e) {
            String where = "";
            for (StackTraceElement el : e.getStackTrace()) {
                if (el.getClassName().startsWith("JdbcClient")) {
                    where = " (line " + el.getLineNumber() + ")";
                    break;
                }
            }
            String state = e instanceof SQLException ? " [" + ((SQLException) e).getSQLState() + "]" : "";
            fail(name, e.getClass().getSimpleName() + state + ": " + e.getMessage() + where);
        }
        System.out.flush();
        return passed;
    }

    static void fail(String name, String details) {
        failed = true;
        String d = String.valueOf(details).replaceAll("\\s+", " ");
        if (d.length() > 600) d = d.substring(0, 600);
        System.out.println("FAIL " + name + ": " + d);
    }

    static void expect(String what, Object expected, Object actual) throws CheckFailed {
        if (!Objects.deepEquals(expected, actual)) {
            throw new CheckFailed(what + ": expected " + show(expected) + " got " + show(actual));
        }
    }

    static String show(Object o) {
        if (o instanceof Object[]) return Arrays.deepToString((Object[]) o);
        if (o instanceof byte[]) return HexFormat.of().formatHex((byte[]) o);
        if (o instanceof String) return "'" + o + "'";
        return String.valueOf(o);
    }

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    static Properties baseProps() {
        Properties p = new Properties();
        String user = env("PGUSER", System.getProperty("user.name"));
        p.setProperty("user", user);
        String pw = System.getenv("PGPASSWORD");
        if (pw != null) p.setProperty("password", pw);
        String sslmode = System.getenv("PGSSLMODE");
        if (sslmode != null && !sslmode.isEmpty()) p.setProperty("sslmode", sslmode);
        String root = System.getenv("PGSSLROOTCERT");
        if (root != null && !root.isEmpty()) p.setProperty("sslrootcert", root);
        p.setProperty("connectTimeout", "10");
        p.setProperty("loginTimeout", "10");
        p.setProperty("socketTimeout", "40");
        p.setProperty("cancelSignalTimeout", "10");
        p.setProperty("ApplicationName", "pgstepup-jdbc");
        return p;
    }

    static String url() {
        String host = env("PGHOST", "localhost");
        if (host.contains(":") && !host.startsWith("[")) host = "[" + host + "]";
        String user = env("PGUSER", System.getProperty("user.name"));
        return "jdbc:postgresql://" + host + ":" + env("PGPORT", "5432") + "/" + env("PGDATABASE", user);
    }

    static Connection connect() throws SQLException {
        return DriverManager.getConnection(url(), baseProps());
    }

    static Connection connect(Properties extra) throws SQLException {
        Properties p = baseProps();
        p.putAll(extra);
        return DriverManager.getConnection(url(), p);
    }

    static Object one(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            if (!rs.next()) return null;
            return rs.getObject(1);
        }
    }

    static String md5(String s) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(s.getBytes(StandardCharsets.UTF_8)));
    }

    static SQLException expectError(String what, String sqlstate, Check c) throws Exception {
        try {
            c.run();
        } catch (SQLException e) {
            expect(what + " sqlstate", sqlstate, e.getSQLState());
            return e;
        }
        throw new CheckFailed(what + ": no error raised, expected " + sqlstate);
    }

    // ------------------------------------------------------------ checks

    // 0. connect: the right user and database (pgJDBC exposes no client-side TLS state)
    static void checkConnect() throws Exception {
        String user = env("PGUSER", System.getProperty("user.name"));
        try (Connection c = connect()) {
            expect("user/database", user + "/" + env("PGDATABASE", user),
                one(c, "select current_user || '/' || current_database()"));
        }
    }

    // 1. several statements in one execute(), results walked with getMoreResults
    static void checkMultiStatement() throws Exception {
        for (String mode : new String[] {"extended", "simple"}) {
            Properties p = new Properties();
            p.setProperty("preferQueryMode", mode);
            try (Connection c = connect(p); Statement st = c.createStatement()) {
                expect(mode + " first is a result set", true, st.execute("select 1; select 'two', 2"));
                try (ResultSet rs = st.getResultSet()) {
                    expect(mode + " has row 1", true, rs.next());
                    expect(mode + " first value", 1, rs.getInt(1));
                    expect(mode + " only one row", false, rs.next());
                }
                expect(mode + " second result", true, st.getMoreResults());
                try (ResultSet rs = st.getResultSet()) {
                    expect(mode + " has row 2", true, rs.next());
                    expect(mode + " second values", "two/2", rs.getString(1) + "/" + rs.getInt(2));
                }
                expect(mode + " no third result", false, st.getMoreResults());
                expect(mode + " update count", -1, st.getUpdateCount());
            }
        }
    }

    // 2. PreparedStatement with parameters
    static void checkExtendedParams() throws Exception {
        try (Connection c = connect();
             PreparedStatement ps = c.prepareStatement(
                 "select ?::int + 1, upper(?), pg_typeof(?)::text, ?::text is null")) {
            ps.setInt(1, 41);
            ps.setString(2, "abc é");
            ps.setLong(3, 7L);
            ps.setNull(4, java.sql.Types.VARCHAR);
            try (ResultSet rs = ps.executeQuery()) {
                expect("row", true, rs.next());
                expect("values", "42|ABC É|bigint|true",
                    rs.getInt(1) + "|" + rs.getString(2) + "|" + rs.getString(3) + "|" + rs.getBoolean(4));
            }
        }
    }

    // 3. the same PreparedStatement past prepareThreshold (named server-side statement)
    static void checkPreparedReuse() throws Exception {
        String sql = "select ?::int * 2, md5(?), ?::bytea";
        try (Connection c = connect(); PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 1; i <= 10; i++) {
                ps.setInt(1, i);
                ps.setString(2, Integer.toString(i));
                ps.setBytes(3, new byte[] {(byte) i, (byte) 0, (byte) 0xff});
                try (ResultSet rs = ps.executeQuery()) {
                    expect("row " + i, true, rs.next());
                    expect("iteration " + i, (i * 2) + "|" + md5(Integer.toString(i)), rs.getInt(1) + "|" + rs.getString(2));
                    expect("bytea " + i, new byte[] {(byte) i, 0, (byte) 0xff}, rs.getBytes(3));
                }
            }
            expect("uses server-side prepare", true, ps.unwrap(PGStatement.class).isUseServerPrepare());
            expect("named statement on the server", 1L, ((Number) one(c,
                "select count(*) from pg_prepared_statements where not from_sql and statement = "
                    + "'select $1::int * 2, md5($2), $3::bytea'")).longValue());
        }
    }

    // 4. rollback, commit, savepoint rollback
    static void checkTransactions() throws Exception {
        String t = T + "_tx";
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("create table " + t + " (id int primary key, v text)");
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("insert into " + t + " values (?, ?)")) {
                ins.setInt(1, 1);
                ins.setString(2, "rolled back");
                expect("insert count", 1, ins.executeUpdate());
                c.rollback();
                expect("after rollback", 0L, ((Number) one(c, "select count(*) from " + t)).longValue());
                ins.setInt(1, 2);
                ins.setString(2, "committed");
                ins.executeUpdate();
                c.commit();
                ins.setInt(1, 3);
                ins.setString(2, "kept");
                ins.executeUpdate();
                Savepoint sp = c.setSavepoint("sp1");
                ins.setInt(1, 4);
                ins.setString(2, "undone by savepoint");
                ins.executeUpdate();
                c.rollback(sp);
                ins.setInt(1, 5);
                ins.setString(2, "after savepoint");
                ins.executeUpdate();
                c.commit();
            }
            c.setAutoCommit(true);
        }
        try (Connection c2 = connect()) {
            expect("committed rows seen by another connection", "2:committed,3:kept,5:after savepoint",
                one(c2, "select string_agg(id || ':' || v, ',' order by id) from " + t));
        }
    }

    // 5. CopyManager copyIn from a Reader and copyOut to a Writer
    static void checkCopy() throws Exception {
        String t = T + "_copy";
        int n = 20000;
        StringBuilder data = new StringBuilder();
        for (int i = 1; i <= n; i++) {
            String v = i % 7 == 0 ? "\\N" : "row " + i + "\\twith tab é✓ \\\\ " + (i * 3);
            data.append(i).append('\t').append(v).append('\t').append(i * 10L).append('\n');
        }
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("create table " + t + " (id int primary key, v text, n bigint)");
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            long in = cm.copyIn("COPY " + t + " FROM STDIN", new StringReader(data.toString()));
            expect("rows copied in", (long) n, in);
            expect("server count/sum/nulls/tabs", n + "|" + (10L * n * (n + 1) / 2) + "|" + (n / 7) + "|" + (n - n / 7),
                one(c, "select count(*) || '|' || sum(n) || '|' || count(*) filter (where v is null) || '|' || "
                    + "count(*) filter (where v = 'row ' || id || E'\\t' || 'with tab é✓ ' || chr(92) || ' ' || id * 3) from " + t));
            StringWriter w = new StringWriter();
            long out = cm.copyOut("COPY (select * from " + t + " order by id) TO STDOUT", w);
            expect("rows copied out", (long) n, out);
            if (!data.toString().equals(w.toString())) {
                throw new CheckFailed("copied-out text differs from copied-in text (lengths " + data.length()
                    + " vs " + w.toString().length() + ")");
            }
            expect("connection usable after copy", 7, ((Number) one(c, "select 7")).intValue());
        }
    }

    // 6. LISTEN on one connection, NOTIFY from another while the listener is idle
    static void checkListenNotify() throws Exception {
        String chan = T + "_chan";
        String payload = "payload é ✓ " + SUFFIX;
        try (Connection listener = connect(); Connection notifier = connect()) {
            try (Statement st = listener.createStatement()) {
                st.execute("LISTEN " + chan);
            }
            // pg_backend_pid() rather than BackendKeyData: a proxy may hand out its own keys
            int notifierPid = ((Number) one(notifier, "select pg_backend_pid()")).intValue();
            AtomicReference<Throwable> err = new AtomicReference<>();
            Thread th = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    try (PreparedStatement ps = notifier.prepareStatement("select pg_notify(?, ?)")) {
                        ps.setString(1, chan);
                        ps.setString(2, payload);
                        ps.execute();
                    }
                } catch (Throwable e) {
                    err.set(e);
                }
            });
            th.setDaemon(true);
            th.start();
            PGConnection pg = listener.unwrap(PGConnection.class);
            List<PGNotification> got = new ArrayList<>();
            long deadline = System.currentTimeMillis() + 10000;
            while (got.isEmpty() && System.currentTimeMillis() < deadline) {
                PGNotification[] ns = pg.getNotifications(1000);
                if (ns != null) got.addAll(Arrays.asList(ns));
            }
            th.join(5000);
            if (err.get() != null) throw new CheckFailed("notifier failed: " + err.get());
            expect("notifications received", 1, got.size());
            expect("channel", chan, got.get(0).getName());
            expect("payload", payload, got.get(0).getParameter());
            expect("sender pid", notifierPid, got.get(0).getPID());
        }
    }

    // 7. Statement.cancel() from another thread
    static void checkCancel() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            Thread th = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    st.cancel();
                } catch (Exception e) {
                    System.err.println("cancel thread: " + e);
                }
            });
            th.setDaemon(true);
            th.start();
            long t0 = System.nanoTime();
            expectError("pg_sleep(30)", "57014", () -> st.execute("select pg_sleep(30)"));
            long ms = (System.nanoTime() - t0) / 1_000_000;
            th.join(5000);
            if (ms > 5000) throw new CheckFailed("cancel took " + ms + " ms");
            expect("connection usable after cancel", 3, ((Number) one(c, "select 3")).intValue());
        }
    }

    // 8. errors followed by good queries, simple and extended, and in a transaction
    static void checkErrorRecovery() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            expectError("select 1/0", "22012", () -> st.executeQuery("select 1/0"));
            expect("after simple error", 2, ((Number) one(c, "select 2")).intValue());
            try (PreparedStatement ps = c.prepareStatement("select 10 / ?")) {
                // alternate failures and successes, crossing prepareThreshold
                for (int i = 0; i < 8; i++) {
                    int div = i % 2 == 0 ? 0 : 5;
                    ps.setInt(1, div);
                    if (div == 0) {
                        expectError("prepared 10/0 #" + i, "22012", ps::executeQuery);
                    } else {
                        try (ResultSet rs = ps.executeQuery()) {
                            rs.next();
                            expect("prepared 10/5 #" + i, 2, rs.getInt(1));
                        }
                    }
                }
            }
            c.setAutoCommit(false);
            expectError("1/0 in tx", "22012", () -> st.executeQuery("select 1/0"));
            expectError("query in aborted tx", "25P02", () -> st.executeQuery("select 1"));
            c.rollback();
            expect("after rollback", 4, ((Number) one(c, "select 4")).intValue());
            c.commit();
        }
    }

    // 9. 100k rows, fully read, with per-row md5 verified and count/sum checked
    static void checkBigResult() throws Exception {
        int n = 100000;
        long wantSum = (long) n * (n + 1) / 2;
        MessageDigest md = MessageDigest.getInstance("MD5");
        HexFormat hex = HexFormat.of();
        try (Connection c = connect(); Statement st = c.createStatement()) {
            long count = 0, sum = 0, bad = 0;
            try (ResultSet rs = st.executeQuery("select g, md5(g::text) from generate_series(1," + n + ") g")) {
                while (rs.next()) {
                    int g = rs.getInt(1);
                    count++;
                    sum += g;
                    String want = hex.formatHex(md.digest(Integer.toString(g).getBytes(StandardCharsets.US_ASCII)));
                    if (!want.equals(rs.getString(2))) bad++;
                }
            }
            expect("count/sum/bad md5", n + "/" + wantSum + "/0", count + "/" + sum + "/" + bad);
            // Again with a fetch size inside a transaction: Execute with a row
            // limit and PortalSuspended, 5000 rows at a time.
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("select g from generate_series(1, ?) g")) {
                ps.setFetchSize(5000);
                ps.setInt(1, n);
                count = 0;
                sum = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        count++;
                        sum += rs.getLong(1);
                    }
                }
            }
            c.commit();
            expect("fetch-size count/sum", n + "/" + wantSum, count + "/" + sum);
        }
    }

    // 10. types round trip as parameters
    static void checkTypes() throws Exception {
        String text = "héllo wörld ✓ 日本語 🎉";
        byte[] blob = new byte[256];
        for (int i = 0; i < 256; i++) blob[i] = (byte) i;
        OffsetDateTime ts = OffsetDateTime.of(2024, 3, 15, 12, 34, 56, 789123000, ZoneOffset.ofHoursMinutes(5, 30));
        BigDecimal num = new BigDecimal("12345678901234567890.123456789012345");
        Integer[] ints = {1, 2, 3, Integer.MIN_VALUE};
        String[] texts = {"a b", "c", null, "é\"q\\", ""};
        String json = "{\"outer\": {\"list\": [1, 2.5, {\"deep\": null}], \"s\": \"é✓\"}, \"b\": true, \"n\": \"12\"}";
        String jsonNormalized = "{\"b\": true, \"n\": \"12\", \"outer\": {\"s\": \"é✓\", \"list\": [1, 2.5, {\"deep\": null}]}}";
        try (Connection c = connect()) {
            try (Statement st = c.createStatement()) {
                st.execute("set timezone = 'Asia/Tokyo'");
            }
            String sql = "select ?::text, ?::bytea, ?::timestamptz, ?::numeric, ?::int[], ?::text[], ?::jsonb, "
                + "octet_length(?::text), md5(?::bytea)";
            try (PreparedStatement ps = c.prepareStatement(sql)) {
                // 7 runs: crosses prepareThreshold, so both unnamed and named
                // statements (and pgJDBC's binary transfer) are exercised.
                for (int run = 1; run <= 7; run++) {
                    ps.setString(1, text);
                    ps.setBytes(2, blob);
                    ps.setObject(3, ts);
                    ps.setBigDecimal(4, num);
                    ps.setArray(5, c.createArrayOf("int4", ints));
                    ps.setArray(6, c.createArrayOf("text", texts));
                    PGobject j = new PGobject();
                    j.setType("jsonb");
                    j.setValue(json);
                    ps.setObject(7, j);
                    ps.setString(8, text);
                    ps.setBytes(9, blob);
                    try (ResultSet rs = ps.executeQuery()) {
                        String r = "run " + run + " ";
                        expect(r + "row", true, rs.next());
                        expect(r + "text", text, rs.getString(1));
                        expect(r + "bytea", blob, rs.getBytes(2));
                        expect(r + "timestamptz instant", ts.toInstant(), rs.getObject(3, OffsetDateTime.class).toInstant());
                        expect(r + "timestamptz text", "2024-03-15 16:04:56.789123+09", rs.getString(3));
                        expect(r + "numeric", num, rs.getBigDecimal(4));
                        Array ia = rs.getArray(5);
                        expect(r + "int[]", ints, ia.getArray());
                        Array ta = rs.getArray(6);
                        expect(r + "text[]", texts, ta.getArray());
                        expect(r + "jsonb", jsonNormalized, rs.getString(7));
                        expect(r + "text octets on server", 32, rs.getInt(8));
                        expect(r + "bytea md5 on server", hex(MessageDigest.getInstance("MD5").digest(blob)), rs.getString(9));
                    }
                }
            }
        }
    }

    static String hex(byte[] b) {
        return HexFormat.of().formatHex(b);
    }

    // 11. pgJDBC only supports client_encoding UTF8: check a non-ASCII
    //     ApplicationName from the startup packet and a non-ASCII custom GUC.
    static void checkApplicationName() throws Exception {
        String name = "pgstepup-jdbc héllo ✓";
        Properties p = new Properties();
        p.setProperty("ApplicationName", name);
        try (Connection c = connect(p)) {
            expect("client_encoding", "UTF8", one(c, "show client_encoding"));
            String fromStartup = (String) one(c, "select current_setting('application_name')");
            // PostgreSQL itself replaces non-ASCII bytes in application_name
            // (with '?' up to v15, with \\x escapes from v16), so compare with
            // what the server makes of the same value set through a query.
            String viaQuery;
            try (PreparedStatement ps = c.prepareStatement("select set_config('application_name', ?, false)")) {
                ps.setString(1, name);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    viaQuery = rs.getString(1);
                }
            }
            if (fromStartup == null || !fromStartup.startsWith("pgstepup-jdbc h")) {
                throw new CheckFailed("application_name from startup: " + show(fromStartup));
            }
            expect("application_name startup vs set_config", viaQuery, fromStartup);
            expect("getClientInfo", viaQuery, c.getClientInfo("ApplicationName"));
            String label = "é ✓ 日本語 🎉";
            try (PreparedStatement ps = c.prepareStatement(
                "select set_config('pgstepup.label', ?, false), current_setting('pgstepup.label')")) {
                ps.setString(1, label);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    expect("custom GUC round trip", label + "|" + label, rs.getString(1) + "|" + rs.getString(2));
                }
            }
        }
    }

    // DatabaseMetaData calls DBeaver makes on connect
    static void checkMetadata() throws Exception {
        String meta = T + "_meta", fk = T + "_fk";
        String db = env("PGDATABASE", env("PGUSER", System.getProperty("user.name")));
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("create table " + meta + " (id integer primary key, label text not null, created timestamptz default now())");
            st.execute("create index " + meta + "_label_idx on " + meta + " (label)");
            st.execute("create table " + fk + " (id int primary key, meta_id int references " + meta + "(id))");
            DatabaseMetaData md = c.getMetaData();
            expect("product name", "PostgreSQL", md.getDatabaseProductName());
            expect("product version", one(c, "show server_version"), md.getDatabaseProductVersion());
            if (md.getDatabaseMajorVersion() < 10) throw new CheckFailed("major version " + md.getDatabaseMajorVersion());
            if (!md.getDriverName().contains("PostgreSQL JDBC")) throw new CheckFailed("driver " + md.getDriverName());
            expect("user name", env("PGUSER", System.getProperty("user.name")), md.getUserName());
            expect("current_schema", "public", one(c, "select current_schema()"));

            List<String> schemas = column(md.getSchemas(), "TABLE_SCHEM");
            for (String s : new String[] {"public", "pg_catalog", "information_schema"}) {
                if (!schemas.contains(s)) throw new CheckFailed("getSchemas lacks " + s + ": " + schemas);
            }
            List<String> catalogs = column(md.getCatalogs(), "TABLE_CAT");
            if (!catalogs.contains(db)) throw new CheckFailed("getCatalogs lacks " + db + ": " + catalogs);

            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + ":" + rs.getString("TABLE_TYPE"));
                }
            }
            for (String t : new String[] {meta, fk}) {
                if (!tables.contains("public." + t + ":TABLE")) throw new CheckFailed("getTables lacks " + t + ": " + tables);
            }

            List<String> cols = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", meta, "%")) {
                while (rs.next()) {
                    cols.add(rs.getInt("ORDINAL_POSITION") + ":" + rs.getString("COLUMN_NAME") + ":"
                        + rs.getString("TYPE_NAME") + ":" + rs.getInt("NULLABLE"));
                }
            }
            expect("getColumns", List.of(
                "1:id:int4:" + DatabaseMetaData.columnNoNulls,
                "2:label:text:" + DatabaseMetaData.columnNoNulls,
                "3:created:timestamptz:" + DatabaseMetaData.columnNullable), cols);

            List<String> pks = new ArrayList<>();
            try (ResultSet rs = md.getPrimaryKeys(null, "public", meta)) {
                while (rs.next()) pks.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("PK_NAME"));
            }
            expect("getPrimaryKeys", List.of("id:" + meta + "_pkey"), pks);

            List<String> fks = new ArrayList<>();
            try (ResultSet rs = md.getImportedKeys(null, "public", fk)) {
                while (rs.next()) {
                    fks.add(rs.getString("PKTABLE_NAME") + "." + rs.getString("PKCOLUMN_NAME") + "<-"
                        + rs.getString("FKTABLE_NAME") + "." + rs.getString("FKCOLUMN_NAME"));
                }
            }
            expect("getImportedKeys", List.of(meta + ".id<-" + fk + ".meta_id"), fks);

            List<String> idx = new ArrayList<>();
            try (ResultSet rs = md.getIndexInfo(null, "public", meta, false, false)) {
                while (rs.next()) {
                    idx.add(rs.getString("INDEX_NAME") + ":" + rs.getString("COLUMN_NAME") + ":" + rs.getBoolean("NON_UNIQUE"));
                }
            }
            idx.sort(null);
            expect("getIndexInfo", List.of(meta + "_label_idx:label:true", meta + "_pkey:id:false"), idx);

            List<String> types = column(md.getTypeInfo(), "TYPE_NAME");
            for (String ty : new String[] {"int4", "text", "bytea", "jsonb", "timestamptz", "numeric"}) {
                if (!types.contains(ty)) throw new CheckFailed("getTypeInfo lacks " + ty + " (" + types.size() + " types)");
            }

            List<String> fns = new ArrayList<>();
            try (ResultSet rs = md.getFunctions(null, "pg_catalog", "abs")) {
                while (rs.next()) fns.add(rs.getString("FUNCTION_SCHEM") + "." + rs.getString("FUNCTION_NAME"));
            }
            if (fns.isEmpty() || !fns.stream().allMatch("pg_catalog.abs"::equals)) {
                throw new CheckFailed("getFunctions abs: " + fns);
            }
        }
    }

    static List<String> column(ResultSet rs, String col) throws SQLException {
        List<String> out = new ArrayList<>();
        try (rs) {
            while (rs.next()) out.add(rs.getString(col));
        }
        return out;
    }

    // ------------------------------------------------------------ main

    static void cleanup() {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            st.execute("drop table if exists " + String.join(", ", TABLES));
        } catch (Exception e) {
            System.err.println("# cleanup failed: " + e);
        }
    }

    // What DBeaver and DataGrip send on connect and on every schema refresh, as they send it
    // (pgJDBC, parameters bound), run under the built-in policy with every step-up refused at
    // once: introspection must pass as the reads it is, a write must not.
    static void checkIdeIntrospection() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            try (ResultSet rs = st.executeQuery("select current_schema(),session_user")) {
                rs.next();
                expect("DBeaver current_schema", "public", rs.getString(1));
                expect("DBeaver session_user", env("PGUSER", System.getProperty("user.name")), rs.getString(2));
            }
            List<String> namespaces = new ArrayList<>();
            try (ResultSet rs = st.executeQuery("SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n "
                    + "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 "
                    + "AND d.classoid='pg_namespace'::regclass ORDER BY nspname")) {
                while (rs.next()) namespaces.add(rs.getString("nspname"));
            }
            if (!namespaces.contains("public")) throw new CheckFailed("DBeaver namespaces lack public: " + namespaces);
            String keywords = (String) one(c, "select string_agg(word, ',') from pg_catalog.pg_get_keywords() "
                + "where word <> ALL ('{a,abs,absolute,action}'::text[])");
            if (keywords == null || !keywords.contains("select")) throw new CheckFailed("DBeaver keywords: " + keywords);

            // DataGrip's transaction-id probe: a parameter for the standby case, txid_current() otherwise.
            try (PreparedStatement ps = c.prepareStatement("select case\n  when pg_catalog.pg_is_in_recovery()\n"
                    + "    then ?\n  else\n    pg_catalog.txid_current()::varchar::bigint\n  end as current_txid")) {
                ps.setNull(1, Types.BIGINT);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    if (rs.getLong(1) <= 0) throw new CheckFailed("DataGrip current_txid " + rs.getLong(1));
                }
            }
            one(c, "select L.transactionid::varchar::bigint as transaction_id\nfrom pg_catalog.pg_locks L\n"
                + "where L.transactionid is not null\norder by pg_catalog.age(L.transactionid) desc\nlimit 1");
            String db = env("PGDATABASE", env("PGUSER", System.getProperty("user.name")));
            List<String> databases = new ArrayList<>();
            try (ResultSet rs = st.executeQuery("select N.oid::bigint as id, datname as name, D.description, "
                    + "datistemplate as is_template, datallowconn as allow_connections, "
                    + "pg_catalog.pg_get_userbyid(N.datdba) as \"owner\" from pg_catalog.pg_database N "
                    + "left join pg_catalog.pg_shdescription D on N.oid = D.objoid order by case when datname = "
                    + "pg_catalog.current_database() then -1::bigint else N.oid::bigint end")) {
                while (rs.next()) databases.add(rs.getString("name"));
            }
            expect("DataGrip lists the current database first", db, databases.isEmpty() ? null : databases.get(0));
            try (PreparedStatement ps = c.prepareStatement("select xmin::varchar::bigint as state_number, nspname "
                    + "from pg_catalog.pg_namespace where nspname = ?")) {
                ps.setString(1, "public");
                try (ResultSet rs = ps.executeQuery()) {
                    if (!rs.next() || rs.getLong(1) <= 0) throw new CheckFailed("DataGrip namespace state number");
                }
            }
            if (one(c, "select pg_catalog.pg_postmaster_start_time()") == null) {
                throw new CheckFailed("pg_postmaster_start_time");
            }
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = c.getMetaData().getColumns(null, "pg_catalog", "pg_namespace", "%")) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME"));
            }
            if (!columns.contains("nspname")) throw new CheckFailed("getColumns(pg_namespace): " + columns);

            SQLException refused = expectError("a write is refused at once", "42501",
                () -> st.execute("create temp table " + T + "_refused (a int)"));
            if (!refused.getMessage().contains("pgstepup")) throw new CheckFailed("refusal: " + refused.getMessage());
            expect("the session goes on", 7, one(c, "select 7"));
        }
    }

    public static void main(String[] args) {
        long start = System.nanoTime();
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(GLOBAL_TIMEOUT_S * 1000L);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAIL watchdog: script still running after " + GLOBAL_TIMEOUT_S + " s");
            System.out.flush();
            Runtime.getRuntime().halt(1);
        });
        watchdog.setDaemon(true);
        watchdog.start();
        Object[][] checks = {
            {"simple_query_multi_statement", (Check) JdbcClient::checkMultiStatement},
            {"extended_params", (Check) JdbcClient::checkExtendedParams},
            {"prepared_reuse", (Check) JdbcClient::checkPreparedReuse},
            {"transactions", (Check) JdbcClient::checkTransactions},
            {"copy_in_out", (Check) JdbcClient::checkCopy},
            {"listen_notify", (Check) JdbcClient::checkListenNotify},
            {"cancel", (Check) JdbcClient::checkCancel},
            {"error_recovery", (Check) JdbcClient::checkErrorRecovery},
            {"big_result", (Check) JdbcClient::checkBigResult},
            {"types_round_trip", (Check) JdbcClient::checkTypes},
            {"application_name_unicode", (Check) JdbcClient::checkApplicationName},
            {"database_metadata", (Check) JdbcClient::checkMetadata},
        };
        // Under the built-in policy nothing may be created, so nothing is cleaned up either.
        boolean ideOnly = args.length == 1 && args[0].equals("ide-introspection");
        if (ideOnly) {
            checks = new Object[][] {{"ide_introspection", (Check) JdbcClient::checkIdeIntrospection}};
        }
        boolean connected = check("connect", JdbcClient::checkConnect);
        try {
            for (Object[] ch : checks) {
                if (connected) {
                    check((String) ch[0], (Check) ch[1]);
                } else {
                    fail((String) ch[0], "skipped: cannot connect");
                }
            }
        } finally {
            if (connected && !ideOnly) cleanup();
        }
        System.out.printf("# java client: %.1f s%n", (System.nanoTime() - start) / 1e9);
        System.out.flush();
        System.exit(failed ? 1 : 0);
    }
}
