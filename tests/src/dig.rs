//! What dig and kdig printed, read once for the tests, the scenarios and the demo.

/// The last reply that dig (or kdig) printed in its default output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigReply {
    /// The rcode of the last header printed, e.g. "NOERROR"; `None` when no reply was
    /// printed at all.
    pub status: Option<String>,
    /// Header flags of that reply ("qr", "aa", "tc"…).
    pub flags: Vec<String>,
    /// The rdata of each record of its answer section.
    pub answers: Vec<String>,
    /// dig's ";; Query time: N msec".
    pub query_ms: Option<u64>,
    /// dig said that the UDP reply was truncated and it retried over TCP.
    pub truncated_then_tcp: bool,
}

impl DigReply {
    /// Reads dig's or kdig's default output. With several replies (dig's TCP retry after
    /// TC=1, `+tries`), the last one wins.
    pub fn parse(text: &str) -> DigReply {
        let mut reply = DigReply::default();
        let mut in_answer = false;
        for line in text.lines() {
            if let Some(rest) = line.split("status: ").nth(1) {
                let end = rest
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .unwrap_or(rest.len());
                reply.status = Some(rest[..end].to_owned());
                reply.answers.clear();
                reply.flags.clear();
            } else if let Some(rest) = line
                .strip_prefix(";; flags: ")
                .or_else(|| line.strip_prefix(";; Flags: "))
            {
                let flags = rest.split(';').next().unwrap_or("");
                reply.flags = flags.split_whitespace().map(str::to_owned).collect();
            } else if line.starts_with(";; ANSWER SECTION:") {
                in_answer = true;
            } else if line.trim().is_empty() || line.starts_with(';') {
                in_answer = false;
                if let Some(ms) = line
                    .strip_prefix(";; Query time: ")
                    .and_then(|r| r.split(' ').next())
                {
                    reply.query_ms = ms.parse().ok();
                }
                if line.contains("Truncated, retrying in TCP mode") {
                    reply.truncated_then_tcp = true;
                }
            } else if in_answer {
                // name ttl class type rdata…
                let rdata: Vec<&str> = line.split_whitespace().skip(4).collect();
                reply.answers.push(rdata.join(" "));
            }
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIG: &str = "\
;; Truncated, retrying in TCP mode.

; <<>> DiG 9.18.28-1~deb12u2-Debian <<>> @169.254.25.10 www.example.test A
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242
;; flags: qr rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1

;; QUESTION SECTION:
;www.example.test.\t\tIN\tA

;; ANSWER SECTION:
www.example.test.\t0\tIN\tA\t203.0.113.80

;; Query time: 3 msec
";

    const KDIG: &str = "\
;; ->>HEADER<<- opcode: QUERY; status: NXDOMAIN; id: 17
;; Flags: qr rd ra; QUERY: 1; ANSWER: 0; AUTHORITY: 1; ADDITIONAL: 0
";

    #[test]
    fn reads_dig_and_kdig() {
        let d = DigReply::parse(DIG);
        assert_eq!(d.status.as_deref(), Some("NOERROR"));
        assert_eq!(d.flags, ["qr", "rd", "ra"]);
        assert_eq!(d.answers, ["203.0.113.80"]);
        assert_eq!(d.query_ms, Some(3));
        assert!(d.truncated_then_tcp);
        let k = DigReply::parse(KDIG);
        assert_eq!(k.status.as_deref(), Some("NXDOMAIN"));
        assert_eq!(k.flags, ["qr", "rd", "ra"]);
        assert!(k.answers.is_empty());
        assert_eq!(DigReply::parse(";; connection timed out").status, None);
    }
}
