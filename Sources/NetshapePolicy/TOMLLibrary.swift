internal import TOMLKit

/// toml++'s own verdict on `text`: nil when it parses, its error otherwise. Only for text that
/// `tomlSyntaxProblem` accepted (toml++ aborts the process on some other text): the corpus and fuzz
/// tests hold the recogniser against it.
func tomlLibraryError(_ text: String) -> String? {
    do {
        _ = try TOMLTable(string: text)
        return nil
    } catch {
        return "\(error)"
    }
}
