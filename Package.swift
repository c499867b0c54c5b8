// swift-tools-version:6.0
import PackageDescription

// Dependency direction (each line only imports what is above it):
//   NetshapeCore            pure values, planner, differ, ports (no Glibc, no C, no I/O)
//   NetshapePolicy          TOML text -> validated Policy (TOMLKit stays in here)
//   NetshapeEngine          observe -> plan -> apply -> verify, through Core's ports only
//   NetshapeKernel          the ports for real: own netlink transport (libnl-route-3 builds/parses), bpf(), cgroupfs, /proc
//   NetshapeMetrics         Prometheus exposition and its small HTTP/1.1 server (swift-prometheus)
//   NetshapeDaemon          long-running services (exec events, reconcile, reload, docker events, metrics endpoint,
//                           systemd watchdog, sd_notify)
//   NetshapeFailure         errors -> exit statuses and CNI codes, shared by CLI and CNI
//   NetshapeCNI             the CNI plugin (config -> one-namespace policy -> engine)
//   NetshapeCLI             argument parsing and rendering, one file per command
//   netshape                the executable: one line calling NetshapeCLI
let package = Package(
    name: "netshape",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "netshape", targets: ["netshape"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .target(name: "NetshapeCore"),
        .target(
            name: "NetshapePolicy",
            dependencies: ["NetshapeCore", .product(name: "TOMLKit", package: "TOMLKit")]
        ),
        .systemLibrary(
            name: "CLibnlRoute",
            pkgConfig: "libnl-route-3.0",
            providers: [.apt(["libnl-3-dev", "libnl-route-3-dev"])]
        ),
        .target(name: "CNetshapeShim"),
        .target(
            name: "NetshapeEngine",
            dependencies: ["NetshapeCore", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "NetshapeKernel",
            dependencies: ["NetshapeCore", "CLibnlRoute", "CNetshapeShim"]
        ),
        .target(
            name: "NetshapeMetrics",
            dependencies: [
                "NetshapeEngine", "NetshapeKernel", .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .target(
            name: "NetshapeDaemon",
            dependencies: [
                "NetshapeCore", "NetshapePolicy", "NetshapeEngine", "NetshapeKernel", "NetshapeMetrics",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "NetshapeFailure",
            dependencies: ["NetshapeCore", "NetshapePolicy", "NetshapeEngine", "NetshapeKernel"]
        ),
        .target(
            name: "NetshapeCNI",
            dependencies: ["NetshapeCore", "NetshapePolicy", "NetshapeEngine", "NetshapeKernel", "NetshapeFailure"]
        ),
        .target(
            name: "NetshapeCLI",
            dependencies: [
                "NetshapeCore", "NetshapePolicy", "NetshapeEngine", "NetshapeKernel", "NetshapeDaemon", "NetshapeCNI",
                "NetshapeFailure",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "netshape", dependencies: ["NetshapeCLI"]),
        .target(name: "NetshapeTestSupport", dependencies: ["NetshapeCore", "NetshapeEngine"]),
        // The tests' own loopback TCP client (the socket API directly, unlike the server it checks).
        .target(name: "NetshapeTestClients", path: "Tests/NetshapeTestClients"),
        .testTarget(name: "NetshapeCoreTests", dependencies: ["NetshapeCore", "NetshapeTestSupport"]),
        .testTarget(name: "NetshapePolicyTests", dependencies: ["NetshapePolicy", "NetshapeCore"]),
        .testTarget(
            name: "NetshapeEngineTests",
            dependencies: [
                "NetshapeEngine", "NetshapeCore", "NetshapePolicy", "NetshapeTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "NetshapeCLITests",
            dependencies: ["NetshapeCLI", "NetshapeCNI", "NetshapeFailure", "NetshapeEngine", "NetshapeTestSupport"]
        ),
        .testTarget(
            name: "NetshapeMetricsTests",
            dependencies: [
                "NetshapeMetrics", "NetshapeEngine", "NetshapeCore", "NetshapeKernel", "NetshapeDaemon",
                "NetshapeTestClients",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .testTarget(
            name: "NetshapeDaemonTests",
            dependencies: [
                "NetshapeDaemon", "NetshapeCore", "NetshapeEngine", "NetshapeKernel", "NetshapePolicy",
                "NetshapeTestSupport", .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "NetshapeKernelTests", dependencies: ["NetshapeKernel", "NetshapeCore", "CNetshapeShim"]),
        .testTarget(
            name: "NetshapeIntegrationTests",
            dependencies: ["NetshapeCore", "NetshapeKernel", "NetshapeTestSupport", "NetshapeTestClients"]
        ),
    ]
)
