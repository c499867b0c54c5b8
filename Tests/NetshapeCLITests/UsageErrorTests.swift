import Foundation
import Testing

@testable import NetshapeCLI

/// A policy with classes in one namespace and none in the other, like policies/web.toml.
let twoNamespaces = """
    version = 1
    [[namespace]]
    name = "web"
    egress = "100mbit"
    default = "other"
    [[namespace.class]]
    name = "frontend"
    rate = "60mbit"
    match.comm = ["nginx"]
    [[namespace.class]]
    name = "backup"
    rate = "5mbit"
    [[namespace.class]]
    name = "other"
    rate = "10mbit"
    [[namespace]]
    name = "batch"
    egress = "20mbit"
    """

/// Usage errors of the binary: each says what was probably meant and what there is (issue 18).
@Suite struct UsageErrorTests {
    @Test func bareNetshapePrintsHelpAndExits2() throws {
        let r = try runBinary([])
        #expect(r.status == 2)
        #expect(r.out.isEmpty)
        #expect(r.err.contains("USAGE: netshape <subcommand>"), "\(r.err)")
        for sub in UsageHelp.commandNames { #expect(r.err.contains("\n  \(sub) "), "help lists \(sub)") }
        #expect(r.err.hasSuffix("netshape: error: give a command, e.g. netshape apply POLICY\n"), "\(r.err)")
    }

    @Test func mistypedSubcommandSuggestsTheRightOne() throws {
        for (typed, meant) in [("aply", "apply"), ("stauts", "status"), ("rest", "reset"), ("Check", "check")] {
            let r = try runBinary([typed, "policies/web.toml"])
            #expect(r.status == 2)
            #expect(
                r.err.hasPrefix("netshape: error: unknown command '\(typed)'; did you mean '\(meant)'?\n"), "\(r.err)")
            #expect(r.err.contains("commands: check, plan, apply, status, reset, run, classify, daemon"))
        }
    }

    @Test func unknownSubcommandWithoutACloseOneListsThem() throws {
        let r = try runBinary(["frobnicate"])
        #expect(r.status == 2)
        #expect(r.err.hasPrefix("netshape: error: unknown command 'frobnicate'\n"), "\(r.err)")
        #expect(!r.err.contains("did you mean"))
        #expect(r.err.contains("commands: check, plan, apply"))
    }

    @Test func aPolicyInsteadOfACommandSuggestsApply() throws {
        let r = try runBinary(["policies/web.toml"])
        #expect(r.status == 2)
        #expect(
            r.err.hasPrefix(
                "netshape: error: 'policies/web.toml' is not a command; to apply that policy: netshape apply policies/web.toml"
            ), "\(r.err)")
    }

    @Test func optionsAndHelpStillReachTheParser() throws {
        let v = try runBinary(["--version"])
        #expect(v.status == 0 && v.out == "0.1.0\n", "\(v.err)")
        let h = try runBinary(["help", "apply"])
        #expect(h.status == 0 && h.out.contains("USAGE: netshape apply <policy>"), "\(h.err)")
    }

    // `run` and `classify` resolve the class before they touch the kernel, so these need no root
    // and change nothing.

    @Test func unknownClassListsTheClassesOfThePolicy() throws {
        let p = try tempPolicy(twoNamespaces)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try runBinary(["run", p, "nosuch", "--", "true"])
        #expect(r.status == 2)
        #expect(
            r.err == """
                netshape: error: no class "nosuch" in \(p)
                its classes (NAMESPACE/CLASS): web/frontend, web/backup, web/other; no classes in batch

                """)
        let typo = try runBinary(["classify", p, "frontnd", "1"])
        #expect(typo.status == 2)
        #expect(typo.err.hasPrefix("netshape: error: no class \"frontnd\" in \(p); did you mean \"frontend\"?\n"))
    }

    @Test func unknownClassOfANamespaceListsThatNamespacesClasses() throws {
        let p = try tempPolicy(twoNamespaces)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try runBinary(["run", p, "web/backp", "--", "true"])
        #expect(r.status == 2)
        #expect(
            r.err == """
                netshape: error: no class "backp" in namespace web of \(p); did you mean "web/backup"?
                its classes: frontend, backup, other

                """)
        let empty = try runBinary(["classify", p, "batch/x", "1"])
        #expect(empty.status == 2)
        #expect(empty.err.contains("namespace batch has no classes"), "\(empty.err)")
        let ns = try runBinary(["run", p, "wb/frontend", "--", "true"])
        #expect(ns.status == 2)
        #expect(
            ns.err
                == "netshape: error: no namespace \"wb\" in \(p); did you mean \"web\"?\nits namespaces: web, batch\n")
    }

    /// The names spelled out in each configuration are the ones ArgumentParser derived before.
    @Test func commandNamesAreTheDerivedOnes() {
        for c in Netshape.configuration.subcommands where ObjectIdentifier(c) != ObjectIdentifier(DaemonCommand.self) {
            #expect(c.configuration.commandName == String(describing: c).lowercased())
        }
        #expect(UsageHelp.commandNames.count == Netshape.configuration.subcommands.count)
    }

    @Test func suggestionsAreOnlyMadeWhenOneCandidateIsClose() {
        let names = UsageHelp.commandNames
        #expect(UsageHelp.suggestion(for: "aplpy", among: names) == "apply")
        #expect(UsageHelp.suggestion(for: "stat", among: names) == "status")
        #expect(UsageHelp.suggestion(for: "c", among: names) == nil)
        #expect(UsageHelp.suggestion(for: "xyz", among: names) == nil)
        #expect(UsageHelp.suggestion(for: "ab", among: ["ac", "ad"]) == nil)
    }
}

/// TOML syntax errors in people's words, at FILE:LINE:COL, exit 65 (issue 18).
@Suite struct TOMLSyntaxErrorTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var what: String
        var text: String
        var position: String
        var message: String
        var testDescription: String { what }
    }

    static let header = "version = 1\n[[namespace]]\n"
    static let cases: [Case] = [
        Case(
            what: "unterminated string, reported at its opening quote",
            text: header + "name = \"web\negress = \"1mbit\"\n",
            position: "3:8", message: "unterminated string: add the closing \" on the same line"),
        Case(
            what: "unterminated string at the end of the file", text: header + "egress = \"1mbit\"\nname = \"web",
            position: "4:8", message: "unterminated string"),
        Case(
            what: "unterminated literal string", text: header + "name = 'web\n", position: "3:8",
            message: "unterminated string: add the closing ' on the same line"),
        Case(
            what: "missing =", text: header + "name \"web\"\n", position: "3:6",
            message: "expected '=' after the key, found '\"'"),
        Case(
            what: "unquoted text", text: header + "name = \"web\"\negress = 100mbit\n", position: "4:10",
            message: "this value is not valid TOML: put text in quotes (egress = \"100mbit\")"),
        Case(
            what: "missing value", text: header + "name = \"web\"\negress =\n", position: "4:9",
            message: "missing value after '=': found the end of the line"),
        Case(
            what: "a space inside a rate", text: header + "name = \"web\"\negress = 10 mbit\n", position: "4:13",
            message: "unexpected 'm' after the value"),
        Case(
            what: "unclosed [[header]]", text: "version = 1\n[[namespace]\n", position: "2:13",
            message: "unclosed table header: it needs its closing ]]"),
        Case(
            what: "duplicate key", text: header + "name = \"a\"\nname = \"b\"\n", position: "4:8",
            message: "duplicate key 'name': it is already set in this table"),
        Case(
            what: "duplicate table", text: "version = 1\n[settings]\n[settings]\n", position: "3:1",
            message: "[settings] appears twice"),
        Case(
            what: "table after array of tables", text: header + "name = \"a\"\n[namespace]\n", position: "4:1",
            message: "[[namespace]] is a list above; write [[namespace]] here too"),
        Case(
            what: "unclosed array", text: header + "name = \"a\"\nx = [\"nginx\"", position: "4:13",
            message: "unclosed array: the file ends before its closing ]"),
        Case(
            what: "trailing comma in an inline table", text: header + "provision = { address = \"198.18.0.2/24\", }\n",
            position: "3:42", message: "a comma before '}': TOML allows no trailing comma in an inline table"),
        // toml++ aborted the process on these two (exit 134, release build too).
        Case(
            what: "a table-array header whose name begins with '['", text: "version = 1\n[[[a]]\n", position: "2:3",
            message: "TOML syntax: a table-array header `[[NAME]]` whose name begins with '['"),
        Case(
            what: "a backslash where a date-time's time belongs", text: "version = 1\nx = 1979-05-27T\\07:32:00Z\n",
            position: "2:16",
            message: "TOML syntax: a date and time are written 1979-05-27T07:32:00 (seconds included), found '\\'"),
    ]

    @Test(arguments: cases) func syntaxErrorIsWordedForPeople(_ c: Case) throws {
        let p = try tempPolicy(c.text)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try runBinary(["check", p])
        #expect(r.status == 65)
        #expect(r.err.hasPrefix("\(p):\(c.position): error: \(c.message)"), "\(r.err)")
        // toml++'s own words stay out of it.
        #expect(!r.err.contains("Error while parsing") && !r.err.contains("explicitly prohibited"), "\(r.err)")
        #expect(r.err.split(separator: "\n").count == 1)
    }
}

/// scripts/install's starter policy (issue 18): inert as installed, valid once uncommented.
@Suite struct StarterPolicyTests {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("systemd/starter-policy.toml").path

    @Test func asInstalledItShapesNothingAndSaysWhy() throws {
        let r = try runBinary(["check", Self.path])
        #expect(r.status == 65)
        #expect(r.err.contains("the policy names no namespace"), "\(r.err)")
        let text = try String(contentsOfFile: Self.path, encoding: .utf8)
        #expect(!text.contains("namespace.provision"), "the starter policy must never create namespaces")
    }

    @Test func uncommentedItIsAValidHostPolicy() throws {
        // sshd_config's convention: "#key" is a setting to uncomment, "# text" is prose.
        let text = try String(contentsOfFile: Self.path, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false
        )
        .map { l in
            l.hasPrefix("#") && !l.hasPrefix("# ") && l.count > 1 && l != "#" ? String(l.dropFirst()) : String(l)
        }
        .joined(separator: "\n")
        let p = try tempPolicy(text)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try runBinary(["check", p])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("valid (1 namespace(s), 2 class(es))"), "\(r.out)")
    }
}
