import Foundation
import NetshapeCore
import Testing

@testable import NetshapeKernel

/// Hand-picked records at the edges of JSON (escapes, surrogates, number bounds, null, blanks,
/// canonically equal names): what the fast reader accepts, JSONDecoder reads the same.
@Suite struct RecordCodecColdReadTests {
    static let texts: [String] = [
        #"{"namespaces":{"a\u00e9\/\"\\\b\f\n\r\t":{"policy":"\ud83d\ude00"}}}"#,
        #"{"namespaces":{"a":{"policy":"\u0000"}}}"#,
        #"{"namespaces":{"a":{"policy":"\ud83d"}}}"#,
        #"{"namespaces":{"a":{"policy":"\ude00"}}}"#,
        #"{"namespaces":{"a":{"policy":"\ud83d\u0041"}}}"#,
        #"{"namespaces":{"a":{"policy":"\uD83D\uDE00"}}}"#,
        #"{"namespaces":{"é":{"policy":"p"},"e\u0301":{"policy":"q"}}}"#,
        #"{"namespaces":{"a":{"policy":"p","sockCookie":18446744073709551615}}}"#,
        #"{"namespaces":{"a":{"policy":"p","sockCookie":18446744073709551616}}}"#,
        #"{"namespaces":{"a":{"policy":"p","sockCookie":-1}}}"#,
        #"{"namespaces":{"a":{"policy":"p","sockCookie":-0}}}"#,
        #"{"namespaces":{"a":{"policy":"p","target":{"pid":{"_0":-2147483648}}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","target":{"pid":{"_0":2147483648}}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","target":{"pid":{"_0":-0}}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","target":{"host":{}}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","target":{"host":{"_0":null}}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","target":null,"cgroups":null,"egress":null}}}"#,
        #"{"namespaces":{"a":{"policy":null}}}"#,
        #"{"namespaces":null}"#,
        #"{"namespaces":{},"sockCreate":null}"#,
        #"{"namespaces":{},"sockCreate":true}"#,
        "\u{FEFF}{\"namespaces\":{}}",
        " \t\r\n{\"namespaces\":{}} \n",
        "{\"namespaces\":{}}\u{0C}",
        #"{"namespaces":{"a":{"policy":"p","egress":{"netnsID":"1:2","device":"d","ifindex":-1,"handle":"1:","classes":["root","none","ingress","FFFF:ffff"]}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","egress":{"netnsID":"1:2","device":"d","ifindex":1,"handle":"1:0001"}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","egress":{"netnsID":"1:2","device":"d","ifindex":1,"handle":"+1:1"}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","egress":{"netnsID":"1:2","device":"d","ifindex":1e0,"handle":"1:1"}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","cgroups":[]}}}"#,
        #"{"namespaces":{"a":{"policy":"p","ingress":{}}}}"#,
        #"{"namespaces":{"a":{"policy":"p","provisioned":{}}}}"#,
        #"{"namespaces":{"a":{"policy":"p"}}"#,
        #"{"namespaces":{"a":{"policy":"p"}}}}"#,
        #"{"namespaces":{"a":{"policy":"p\u007f"}}}"#,
        "{\"namespaces\":{\"a\":{\"policy\":\"p\u{7F}\"}}}",
        #"{"namespaces":{"a":{"policy":"p"},}}"#,
        #"{"namespaces":{"a":{"p\u006flicy":"p"}}}"#,
        #"{"namespaces":{"a":{"policy":"p","target":{"named":{"_0":"x"}}}},"sockCreate":false}"#,
    ]

    @Test func acceptsOnlyWhatJSONDecoderReadsTheSame() {
        var accepted = 0
        for text in Self.texts {
            let bytes = Array(text.utf8)
            guard let fast = try? RecordCodec.decode(bytes) else { continue }
            accepted += 1
            let slow = try? JSONDecoder().decode(OwnershipRecord.self, from: Data(bytes))
            #expect(slow == fast, "\(text)")
        }
        #expect(accepted > 10)
    }
}
