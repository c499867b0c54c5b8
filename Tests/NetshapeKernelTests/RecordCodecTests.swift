import Foundation
import NetshapeCore
import Testing

@testable import NetshapeKernel

/// The hand-written ownership record reader against JSONDecoder, which it must agree with on
/// every record netshape writes or wrote, and never outdo on anything else.
@Suite struct RecordCodecTests {
    /// splitmix64, seeded: a failure names its seed and can be replayed.
    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
        mutating func chance() -> Bool { next() & 1 == 0 }
        mutating func name() -> String {
            // Names as policies allow them, plus what paths and ids hold: slashes, quotes, non-ASCII.
            let parts = ["web", "c", "x-1", "ns_2", "/tmp/p.toml", "é", "a\"b", "back\\slash", "tab\t", "😀", "4:40"]
            return (0...below(2)).map { _ in parts[below(parts.count)] }.joined()
        }
        mutating func handle() -> TCHandle { TCHandle(raw: UInt32(truncatingIfNeeded: next())) }
        mutating func maybe<T>(_ make: (inout Rng) -> T) -> T? { chance() ? make(&self) : nil }
    }

    static func tree(_ r: inout Rng) -> OwnershipRecord.Tree {
        OwnershipRecord.Tree(
            netnsID: r.name(), device: r.name(), ifindex: Int32(truncatingIfNeeded: r.next()), handle: r.handle(),
            classes: r.maybe { r in (0..<r.below(40)).map { _ in r.handle() } })
    }

    static func target(_ r: inout Rng) -> NetnsTarget {
        switch r.below(6) {
        case 0: return .host
        case 1: return .named(r.name())
        case 2: return .path(r.name())
        case 3: return .pid(Int32(truncatingIfNeeded: r.next()))
        case 4: return .docker(r.name())
        default: return .podman(r.name())
        }
    }

    static func record(_ r: inout Rng) -> OwnershipRecord {
        var record = OwnershipRecord(sockCreate: r.maybe { $0.chance() })
        for _ in 0..<r.below(4) {
            var e = OwnershipRecord.Namespace(
                policy: r.name(), target: r.maybe(target), device: r.maybe { $0.name() }, egress: r.maybe(tree),
                ingress: r.maybe { r in
                    OwnershipRecord.Ingress(
                        tree: r.maybe(tree), ifb: r.maybe { $0.name() }, redirectFrom: r.maybe { $0.name() })
                },
                provisioned: r.maybe { r in
                    OwnershipRecord.Provisioned(
                        netns: r.maybe { $0.name() }, hostDevice: r.maybe { $0.name() }, bridge: r.maybe { $0.name() })
                },
                cgroups: r.maybe { r in (0..<r.below(30)).map { _ in r.name() } })
            e.cgroup2Classifier = r.maybe { $0.name() }
            e.sockCookie = r.maybe { $0.next() }
            record.namespaces[r.name()] = e
        }
        return record
    }

    /// As StateStore writes it, and as a plain encoder would (compact, `\/` escapes).
    static func encodings(_ record: OwnershipRecord) throws -> [[UInt8]] {
        let pretty = JSONEncoder()
        pretty.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return [Array(try pretty.encode(record)), Array(try JSONEncoder().encode(record))]
    }

    static func codable(_ bytes: [UInt8]) -> OwnershipRecord? {
        try? JSONDecoder().decode(OwnershipRecord.self, from: Data(bytes))
    }

    @Test func readsWhatTheEncoderWrites() throws {
        var r = Rng(state: 0x0DEC_0DE5)
        for n in 0..<400 {
            let record = Self.record(&r)
            for bytes in try Self.encodings(record) {
                let fast = try RecordCodec.decode(bytes)
                #expect(fast == record, "record \(n): \(String(decoding: bytes, as: UTF8.self))")
                #expect(fast == Self.codable(bytes))
            }
        }
    }

    /// Records as earlier versions wrote them (fields they did not have yet are absent) read as
    /// JSONDecoder reads them.
    @Test func readsRecordsOfEarlierVersions() throws {
        let records = [
            // Before classes, cgroups and targets were recorded.
            #"{"namespaces":{"web":{"policy":"/etc/netshape/p.toml","egress":{"netnsID":"4:4026531840","device":"eth0","ifindex":2,"handle":"3811:"}}}}"#,
            // Before the sock_create hook and cgroup v2 classifier.
            """
            {
              "namespaces" : {
                "nst-9p9bvi-c" : {
                  "cgroups" : [
                    "netshape/nst-9p9bvi-c",
                    "netshape/nst-9p9bvi-c/slow"
                  ],
                  "device" : "veth0",
                  "egress" : {
                    "classes" : [ "217a:1", "217a:f708" ],
                    "device" : "veth0",
                    "handle" : "217a:",
                    "ifindex" : 2,
                    "netnsID" : "4:4026532180"
                  },
                  "policy" : "/tmp/netshape-test-9p9bvi/p.toml",
                  "target" : { "named" : { "_0" : "nst-9p9bvi-c" } }
                }
              }
            }
            """,
            // Provisioning, ingress on an IFB, the host, a pid, null optionals, escapes.
            #"""
            {"sockCreate":true,"namespaces":{"a\u00e9\ud83d\ude00":{"policy":"\/tmp\/p.toml","target":{"host":{}},
             "ingress":{"ifb":"ifb-a","redirectFrom":"veth0","tree":{"netnsID":"","device":"ifb-a","ifindex":0,
             "handle":"1:","classes":null}},"provisioned":{"netns":"a","hostDevice":"vh-a","bridge":null},
             "sockCookie":18446744073709551615,"cgroup2Classifier":"ns_a"},
             "b":{"policy":"cni:123","target":{"pid":{"_0":-1}},"cgroups":[]}}}
            """#,
            #"{"namespaces":{}}"#,
        ]
        for text in records {
            let bytes = Array(text.utf8)
            let expected = try #require(Self.codable(bytes), "JSONDecoder reads \(text)")
            #expect(try RecordCodec.decode(bytes) == expected, "\(text)")
        }
    }

    /// Whatever the fast reader accepts, JSONDecoder accepts and reads the same: thousands of
    /// damaged records (a byte removed, added or replaced; cut short), and JSON the record never
    /// holds (unknown keys, floats, duplicates), which it leaves to JSONDecoder.
    @Test func neverAcceptsWhatJSONDecoderRefusesOrReadsDifferently() throws {
        var r = Rng(state: 0xBAD_BEEF)
        let noise = Array(#"{}[]:,"\ -.0123456789eEtfnul/ué"#.utf8)
        var accepted = 0
        for _ in 0..<3000 {
            var bytes = try Self.encodings(Self.record(&r))[r.below(2)]
            for _ in 0...r.below(2) where !bytes.isEmpty {
                let at = r.below(bytes.count)
                switch r.below(4) {
                case 0: bytes.remove(at: at)
                case 1: bytes.insert(noise[r.below(noise.count)], at: at)
                case 2: bytes[at] = noise[r.below(noise.count)]
                default: bytes = Array(bytes[..<at])
                }
            }
            guard let fast = try? RecordCodec.decode(bytes) else { continue }
            accepted += 1
            #expect(Self.codable(bytes) == fast, "\(String(decoding: bytes, as: UTF8.self))")
        }
        #expect(accepted > 0, "some damage (a blank, a changed name) leaves a valid record")
        for text in [
            #"{"namespaces":{},"future":1}"#, #"{"namespaces":{"a":{"policy":"p","later":[]}}}"#,
            #"{"namespaces":{"a":{"policy":"p","sockCookie":1.0}}}"#,
            #"{"namespaces":{"a":{"policy":"p","sockCookie":1e3}}}"#,
            #"{"namespaces":{"a":{"policy":"p"},"a":{"policy":"q"}}}"#, #"{"namespaces":{},"namespaces":{}}"#,
            #"{"namespaces":{"a":{"policy":"p","target":{"named":{"_0":"x"},"path":{"_0":"y"}}}}}"#,
        ] {
            #expect(throws: RecordCodec.Unsupported.self, "\(text)") { try RecordCodec.decode(Array(text.utf8)) }
        }
    }

    /// The store goes to JSONDecoder for what the fast reader leaves: a record with a field of a
    /// newer version reads, a damaged one is refused with the path named.
    @Test func storeFallsBackToJSONDecoder() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("record-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("ownership.json")
        try #"{"namespaces":{"a":{"policy":"/p.toml","fromTheFuture":{"x":1.5}}},"also":[]}"#.write(
            to: file, atomically: true, encoding: .utf8)
        let store = StateStore(directory: dir.path)
        #expect(try store.loadOwnership() == OwnershipRecord(namespaces: ["a": .init(policy: "/p.toml", cgroups: nil)]))
        try #"{"namespaces":{"a":{"policy":"/p.toml""#.write(to: file, atomically: true, encoding: .utf8)
        let error = #expect(throws: KernelError.self) { try StateStore(directory: dir.path).loadOwnership() }
        #expect(error?.description.contains("unreadable ownership record") == true, "\(String(describing: error))")
        // And what the store writes, it reads back (through the fast reader).
        var r = Rng(state: 7)
        let record = Self.record(&r)
        try store.saveOwnership(record)
        #expect(try StateStore(directory: dir.path).loadOwnership() == record)
        #expect(try RecordCodec.decode(Array(try Data(contentsOf: file))) == record)
    }
}
