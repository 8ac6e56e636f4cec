package io.percolert.esnode;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.index.mapper.MapperExtrasPlugin;
import org.elasticsearch.reindex.ReindexPlugin;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.percolator.PercolatorPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.transport.Netty4Plugin;

/**
 * Starts one real Elasticsearch 7.17 node in this JVM: HTTP on 127.0.0.1, single-node
 * discovery, the percolator, reindex (delete-by-query, reindex) and mapper-extras
 * (scaled_float) modules loaded from the classpath.
 *
 * <p>Usage: {@code EsNode --http-port PORT --home DIR [--cluster-name NAME]}. Data goes to
 * {@code DIR/data}, logs to standard output (the caller redirects them to a file). The
 * process runs until it is sent SIGTERM/SIGINT, which closes the node cleanly.
 */
public final class EsNode {

    /** {@link Node}'s plugin-taking constructor is protected; this subclass exposes it. */
    private static final class PluginNode extends Node {
        PluginNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    private EsNode() {}

    public static void main(String[] args) throws Exception {
        Map<String, String> options = parse(args);
        String httpPort = require(options, "--http-port");
        Path home = Path.of(require(options, "--home")).toAbsolutePath();
        String clusterName = options.getOrDefault("--cluster-name", "percolert-dev");
        Path config = Files.createDirectories(home.resolve("config"));
        Files.createDirectories(home.resolve("data"));
        Files.createDirectories(home.resolve("logs"));

        // Netty otherwise tries to set the processor count a second time and fails.
        System.setProperty("es.set.netty.runtime.available.processors", "false");

        Settings settings = Settings.builder()
            .put("cluster.name", clusterName)
            .put("node.name", clusterName + "-node")
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            // The transport layer is unused by clients; any free port in the range will do.
            .put("transport.port", "0")
            .put("discovery.type", "single-node")
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            // A shared dev machine may be low on disk; never turn indices read-only for that.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.auto_create_index", false)
            .build();

        // Log INFO and above to standard output, which `percolert devnode` sends to a file.
        Files.writeString(config.resolve("log4j2.properties"), String.join("\n",
            "status = error",
            "appender.console.type = Console",
            "appender.console.name = console",
            "appender.console.layout.type = PatternLayout",
            "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %m%n",
            "rootLogger.level = info",
            "rootLogger.appenderRef.console.ref = console",
            ""));
        LogConfigurator.registerErrorListener();
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings, Map.of(), config, () -> clusterName + "-node");
        LogConfigurator.configure(environment);
        List<Class<? extends Plugin>> plugins = List.of(
            Netty4Plugin.class, PercolatorPlugin.class, ReindexPlugin.class, MapperExtrasPlugin.class);
        Node node = new PluginNode(environment, plugins);

        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "esnode-shutdown"));

        node.start();
        System.out.println("esnode: started on http://127.0.0.1:" + httpPort);
        closed.await();
    }

    private static Map<String, String> parse(String[] args) {
        if (args.length % 2 != 0) {
            throw new IllegalArgumentException("options come in pairs: --name value");
        }
        java.util.HashMap<String, String> options = new java.util.HashMap<>();
        for (int i = 0; i < args.length; i += 2) {
            options.put(args[i], args[i + 1]);
        }
        return options;
    }

    private static String require(Map<String, String> options, String name) {
        String value = options.get(name);
        if (value == null) {
            throw new IllegalArgumentException("missing option " + name);
        }
        return value;
    }
}
