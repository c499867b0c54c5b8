/// Policies more than one test target reads.
public enum SamplePolicy {
    /// Namespace "web" on eth0: `frontend` (comm nginx), `backup` (user backup), `other` (default).
    public static let web = """
        version = 1
        [[namespace]]
        name = "web"
        device = "eth0"
        egress = "100mbit"
        default = "other"

        [[namespace.class]]
        name = "frontend"
        rate = "60mbit"
        priority = 1
        match.comm = ["nginx"]

        [[namespace.class]]
        name = "backup"
        rate = "5mbit"
        ceil = "20mbit"
        match.user = ["backup"]

        [[namespace.class]]
        name = "other"
        rate = "10mbit"
        """
}
