import Glibc

/// Whether user and group names exist on this machine (NSS: /etc/passwd, LDAP, …).
public enum Accounts {
    public static func userExists(_ name: String) -> Bool { getpwnam(name) != nil }
    public static func groupExists(_ name: String) -> Bool { getgrnam(name) != nil }
}
