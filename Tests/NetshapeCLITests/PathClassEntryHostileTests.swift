import Foundation
import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

@testable import NetshapeCLI

/// `run` into a path class where a careless or hostile operator would get it wrong, over the fake
/// kernel: what it refuses and the shell lines it prints.
@Suite struct PathClassEntryHostileTests {
    typealias Entry = Result<(mount: String, path: String, id: UInt64), CLIError>

    func refusal(_ r: Entry) -> String {
        if case .failure(let e) = r { return e.message }
        return "entered"
    }

    func applied(_ text: String = Cgroup2RenderTests.allPaths) throws -> (FakeKernel, Engine, Policy) {
        let policy = try PolicyParser.parse(text, file: "p.toml")
        let k = Cgroup2RenderTests().fake()
        let engine = Engine(kernel: k)
        _ = try engine.apply(policy, policyPath: "/p.toml")
        return (k, engine, policy)
    }

    func entry(
        _ engine: Engine, _ policy: Policy, _ ns: String, _ cls: String, command: PathClassEntry.Command? = nil
    ) throws -> Entry {
        let plan = try engine.plan(policy, policyPath: "/p.toml")
        let d = try #require(plan.desired.namespace(ns))
        let c = try #require(d.classes.first { $0.name == cls })
        return PathClassEntry.directory(c, in: d, observed: plan.observed, policyPath: "/p.toml", command: command)
    }

    /// The socket-creation program decides before the path: a command an earlier comm class
    /// matches (`front`: nginx) would be that class's, so `run` into the path class refuses it.
    @Test func aCommandAnEarlierCommClassMatchesIsRefused() throws {
        let (k, engine, policy) = try applied()
        #expect(k.sockCreateVerdict(namespace: "web", comm: "nginx") != nil, "the comm rule is in the map")
        let nginx = PathClassEntry.Command(comm: "nginx", uid: 0, gid: 0)
        let why = refusal(try entry(engine, policy, "web", "backup", command: nginx))
        #expect(why.contains("matches class front's rules") && why.contains("not backup"), "\(why)")
        let curl = PathClassEntry.Command(comm: "curl", uid: 0, gid: 0)
        let ok = try entry(engine, policy, "web", "backup", command: curl).get()
        #expect(ok.path == "system.slice/backup.service" && ok.id == k.cgroup2Dirs?["system.slice/backup.service"])
    }

    @Test func theCommIsTheKernelsBasenameCutTo15Bytes() {
        #expect(PathClassEntry.Command.comm(of: "/usr/bin/ping") == "ping")
        #expect(PathClassEntry.Command.comm(of: "nginx") == "nginx")
        #expect(PathClassEntry.Command.comm(of: "./a-very-long-program-name") == "a-very-long-pro")
    }

    /// A namespace that was deleted: its classifier is gone with it, and "run apply first" would
    /// be the wrong advice.
    @Test func aDeletedNamespaceIsSaidSo() throws {
        let (k, engine, policy) = try applied()
        let d = try #require(try engine.plan(policy, policyPath: "/p.toml").desired.namespace("web"))
        let c = try #require(d.classes.first { $0.name == "backup" })
        k.namespaces["web"] = nil
        // As `run` reads the machine: the kernel's observation, not a plan (which throws for it).
        let observed = try k.observe(ObservationRequest(policy: policy, processes: false))
        let why = refusal(PathClassEntry.directory(c, in: d, observed: observed, policyPath: "/p.toml"))
        #expect(why.contains("namespace web is not there") && !why.contains("apply"), "\(why)")
    }

    /// The printed shell line must name the directory whatever its name (systemd escapes `-` as
    /// `\x2d` in unit names; anyone may use spaces, quotes or `$`): run by /bin/sh it writes the
    /// pid into that directory's cgroup.procs, here a scratch directory standing in for the mount.
    @Test func theShellLineWorksForAnyDirectoryName() throws {
        let mount = FileManager.default.temporaryDirectory.appendingPathComponent("pce-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: mount) }
        for name in ["plain.slice/a.service", #"system.slice/run-u\x2d1.scope"#, "we ird/it's $HOME `x` \"q\""] {
            let dir = mount + "/" + name
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let procs = dir + "/cgroup.procs"
            #expect(FileManager.default.createFile(atPath: procs, contents: nil))
            let line = PathClassEntry.byHand(mount, name, .host).replacingOccurrences(of: "COMMAND…", with: "true")
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", line]
            try p.run()
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "\(line)")
            let written = (try? String(contentsOfFile: procs, encoding: .utf8)) ?? ""
            #expect(Int(written.trimmingCharacters(in: .whitespacesAndNewlines)) != nil, "\(name): \(line)")
        }
        // A plain path is printed as the docs show it.
        #expect(
            PathClassEntry.byHand("/sys/fs/cgroup", "a.slice", .named("web"))
                == "sh -c 'echo $$ > /sys/fs/cgroup/a.slice/cgroup.procs && exec \"$@\"' sh ip netns exec web COMMAND…")
    }

    /// A rule written as a file-system path (`/sys/fs/cgroup/…` copied from ls) is read relative to
    /// the mount, where nothing is: the note says what to write.
    @Test func aRuleWrittenWithTheMountPointSaysWhatToWrite() throws {
        let text = Cgroup2RenderTests.allPaths.replacingOccurrences(
            of: "match.cgroup = [\"jobs.slice\"]", with: "match.cgroup = [\"/sys/fs/cgroup/jobs.slice\"]")
        let (_, engine, policy) = try applied(text)
        let notes = try engine.plan(policy, policyPath: "/p.toml").desired.notes
        #expect(notes.contains { $0.contains("for /sys/fs/cgroup/jobs.slice write \"jobs.slice\"") }, "\(notes)")
        let v1 = Cgroup2RenderTests.allPaths.replacingOccurrences(
            of: "match.cgroup = [\"jobs.slice\"]", with: "match.cgroup = [\"/sys/fs/cgroupX/net_cls/a\"]")
        let (_, e2, p2) = try applied(v1)
        let n2 = try e2.plan(p2, policyPath: "/p.toml").desired.notes
        #expect(!n2.contains { $0.contains("paths are relative") }, "no hint for a path that is not the mount's: \(n2)")
    }
}
