import Foundation
import Glibc
import Testing

@testable import NetshapeKernel

/// Mounting a cgroup hierarchy needs CAP_SYS_ADMIN; another favordynmods hierarchy (a netshape
/// daemon running on this machine) already has fast mode on, and this test must not touch it.
func fastMigrationsTestable() -> Bool {
    if geteuid() != 0 {
        print("FastMigrationsTests: not root, mounting a cgroup hierarchy needs CAP_SYS_ADMIN")
        return false
    }
    if FastMigrations.active {
        print("FastMigrationsTests: a favordynmods hierarchy is already mounted here (a running daemon's)")
        return false
    }
    return true
}

func helperMounted(at path: String) -> Bool {
    MountInfoEntry.parse(Files.readString("/proc/self/mountinfo") ?? "").contains {
        $0.mountPoint == path && $0.superOptions.contains("name=netshape-dynmods")
    }
}

/// In the serialized integration suite: favordynmods is one mode for the whole host, and `enable`
/// leaves it to whichever hierarchy has it. As a unit test it ran beside the integration suite, whose
/// daemons mount their own helper: `enable` then answered nil and `active` stayed true, failing
/// both tests whenever a daemon test overlapped them (the condition above is read before any runs).
extension ApplyIntegrationTests {
    @Suite(.enabled(if: fastMigrationsTestable(), "needs root and no favordynmods hierarchy (printed above)"))
    struct FastMigrationsTests {
        let directory = NSTemporaryDirectory() + "nst-dynmods-\(UInt32.random(in: 0...UInt32.max))"

        /// A second daemon of the same state directory leaves the first's mount alone (it used to adopt
        /// it and unmount it under the first when it stopped).
        @Test func aSecondDaemonLeavesTheFirstsMountAlone() throws {
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let first = try #require(try FastMigrations.enable(stateDirectory: directory))
            defer { if helperMounted(at: first.mountPoint) { first.disable() } }
            #expect(helperMounted(at: "\(directory)/dynmods"))
            #expect(FastMigrations.active)
            #expect(try FastMigrations.enable(stateDirectory: directory) == nil)
            #expect(helperMounted(at: first.mountPoint), "still mounted for the first daemon")
            first.disable()
            #expect(!helperMounted(at: first.mountPoint))
            #expect(!FastMigrations.active)
        }

        /// A daemon killed without its defers left the mount and released the lock (the kernel closes
        /// its descriptors): the next daemon adopts the mount and removes it when it stops.
        @Test func aDeadDaemonsMountIsAdoptedAndRemoved() throws {
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let dead = try #require(try FastMigrations.enable(stateDirectory: directory))
            close(dead.lockFD)  // what the kernel does when the process dies
            let next = try #require(try FastMigrations.enable(stateDirectory: directory))
            defer { if helperMounted(at: next.mountPoint) { next.disable() } }
            #expect(next.mountPoint == dead.mountPoint)
            next.disable()
            #expect(!helperMounted(at: dead.mountPoint))
        }
    }
}
