//! Real DNS servers from Debian, configured in the lab's directory and started
//! inside a lab namespace. Each `start_*` returns once the server answers.
//! All of them listen on port 53 and log to `<lab dir>/<name>.log`.

use std::{fmt, fmt::Write as _, fs, net::IpAddr, str::FromStr, time::Duration};

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, Proc};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A DNS server from Debian that plays a forwarder role on a lab node
/// (node-local-dns or CoreDNS): [`Lab::start_forwarder`] starts it listening on
/// given addresses and forwarding every question to given upstreams, with no
/// cache that would hide a query (TTL 0 records stay uncached) and no DNSSEC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Server {
    /// dnsmasq (`--server=…`, `--cache-size=0`).
    Dnsmasq,
    /// unbound (`forward-zone: "."`).
    Unbound,
    /// BIND `named` (`forward only; forwarders { … };`).
    Bind,
    /// Knot Resolver `kresd` (`policy.STUB`).
    Knot,
}

impl Server {
    pub const ALL: [Server; 4] = [Server::Dnsmasq, Server::Unbound, Server::Bind, Server::Knot];

    /// Short name: dnsmasq, unbound, bind, kresd.
    pub fn name(self) -> &'static str {
        match self {
            Server::Dnsmasq => "dnsmasq",
            Server::Unbound => "unbound",
            Server::Bind => "bind",
            Server::Knot => "kresd",
        }
    }

    /// The program it runs (looked up on PATH).
    pub fn program(self) -> &'static str {
        match self {
            Server::Dnsmasq => "dnsmasq",
            Server::Unbound => "unbound",
            Server::Bind => "named",
            Server::Knot => "kresd",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Server {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Server> {
        Server::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| format!("unknown server {name:?}: dnsmasq, unbound, bind or kresd"))
    }
}

/// A zone for [`Lab::start_named`]: its origin and the zone file's text.
#[derive(Clone, Debug)]
pub struct Zone {
    pub name: String,
    pub text: String,
}

impl Lab {
    /// dnsmasq listening on `listen` only (`--bind-interfaces`), no cache, no
    /// /etc/resolv.conf, no /etc/hosts, every query logged; `args` adds options
    /// such as `--server=10.96.0.10` or `--address=/local.test/10.0.0.53`. Each
    /// listen address must be configured on an interface of `ns`.
    pub fn start_dnsmasq(
        &self,
        ns: &str,
        name: &str,
        listen: &[IpAddr],
        args: &[&str],
    ) -> Result<Proc> {
        let mut all = vec!["--log-queries", "--cache-size=0"];
        all.extend_from_slice(args);
        self.start_dnsmasq_quiet(ns, name, listen, &all)
    }

    /// Like [`Lab::start_dnsmasq`], without the query log and with dnsmasq's
    /// default cache: for load, where logging each query would be the bottleneck.
    pub fn start_dnsmasq_quiet(
        &self,
        ns: &str,
        name: &str,
        listen: &[IpAddr],
        args: &[&str],
    ) -> Result<Proc> {
        check_listen(name, listen)?;
        let mut cmd = self.cmd(ns, "dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--group=root",
            "--bind-interfaces",
            "--log-facility=-",
        ]);
        cmd.arg(format!(
            "--pid-file={}",
            self.dir().join(format!("{name}.pid")).display()
        ));
        for addr in listen {
            cmd.arg(format!("--listen-address={addr}"));
        }
        cmd.args(args);
        let proc = self.spawn_logged(name, cmd)?;
        self.wait_all_ready(ns, listen, &proc)?;
        Ok(proc)
    }

    /// unbound as a forwarder: listens on `listen`, forwards everything (`.`)
    /// to `forward_to`, no DNSSEC (`module-config: "iterator"`), no trust
    /// anchors, and `test.` not blocked (unbound answers it NXDOMAIN by default,
    /// per RFC 6761). `extra_server` is appended to the `server:` clause (indent it).
    pub fn start_unbound(
        &self,
        ns: &str,
        name: &str,
        listen: &[IpAddr],
        forward_to: &[IpAddr],
        extra_server: &str,
    ) -> Result<Proc> {
        check_listen(name, listen)?;
        let dir = self.dir().display().to_string();
        let mut conf = format!(
            "server:\n\
             \x20   do-daemonize: no\n\
             \x20   chroot: \"\"\n\
             \x20   username: \"\"\n\
             \x20   directory: \"{dir}\"\n\
             \x20   pidfile: \"{dir}/{name}.pid\"\n\
             \x20   use-syslog: no\n\
             \x20   logfile: \"\"\n\
             \x20   verbosity: 1\n\
             \x20   log-queries: yes\n\
             \x20   num-threads: 1\n\
             \x20   interface-automatic: no\n\
             \x20   port: 53\n\
             \x20   do-ip6: {ip6}\n\
             \x20   do-not-query-localhost: no\n\
             \x20   module-config: \"iterator\"\n\
             \x20   local-zone: \"test.\" nodefault\n\
             \x20   access-control: 0.0.0.0/0 allow\n\
             \x20   access-control: ::/0 allow\n",
            ip6 = if listen.iter().chain(forward_to).any(IpAddr::is_ipv6) {
                "yes"
            } else {
                "no"
            },
        );
        for addr in listen {
            let _ = writeln!(conf, "    interface: {addr}");
        }
        conf.push_str(extra_server);
        if !conf.ends_with('\n') {
            conf.push('\n');
        }
        conf.push_str("remote-control:\n    control-enable: no\nforward-zone:\n    name: \".\"\n");
        for addr in forward_to {
            let _ = writeln!(conf, "    forward-addr: {addr}");
        }
        let conf_path = self.write_file(&format!("{name}.conf"), &conf)?;
        let mut cmd = self.cmd(ns, "unbound");
        cmd.arg("-c").arg(&conf_path);
        let proc = self.spawn_logged(name, cmd)?;
        self.wait_all_ready(ns, listen, &proc)?;
        Ok(proc)
    }

    /// BIND `named -g -u root`: authoritative only (no recursion) for `zones`,
    /// listening on `listen`.
    pub fn start_named(
        &self,
        ns: &str,
        name: &str,
        listen: &[IpAddr],
        zones: &[Zone],
    ) -> Result<Proc> {
        check_listen(name, listen)?;
        let work = self.dir().join(name);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let work_s = work.display().to_string();
        let mut conf = format!(
            "options {{\n\
             \x20   directory \"{work_s}\";\n\
             \x20   pid-file \"{work_s}/named.pid\";\n\
             \x20   session-keyfile \"{work_s}/session.key\";\n\
             \x20   managed-keys-directory \"{work_s}\";\n\
             \x20   listen-on port 53 {{ {v4} }};\n\
             \x20   listen-on-v6 port 53 {{ {v6} }};\n\
             \x20   recursion no;\n\
             \x20   dnssec-validation no;\n\
             \x20   allow-query {{ any; }};\n\
             \x20   notify no;\n\
             }};\n\
             controls {{ }};\n",
            v4 = listen_list(listen, false),
            v6 = listen_list(listen, true),
        );
        for zone in zones {
            let file = work.join(format!("{}.zone", zone.name));
            fs::write(&file, &zone.text).with_context(|| format!("writing {}", file.display()))?;
            let _ = writeln!(
                conf,
                "zone \"{}\" {{ type primary; file \"{}\"; }};",
                zone.name,
                file.display()
            );
        }
        let conf_path = self.write_file(&format!("{name}.conf"), &conf)?;
        let mut cmd = self.cmd(ns, "named");
        cmd.args(["-g", "-u", "root", "-n", "1", "-c"])
            .arg(&conf_path);
        let proc = self.spawn_logged(name, cmd)?;
        self.wait_all_ready(ns, listen, &proc)?;
        Ok(proc)
    }

    /// Starts `server` in `ns` as a forwarder: it listens on `listen` and
    /// forwards every question to `forward_to` (port 53). `name` names its
    /// files (`<name>.log`, `<name>.conf`). `extra` is added to its
    /// configuration in the server's own terms: dnsmasq options (split on
    /// whitespace), unbound `server:` lines, BIND `options` statements, kresd
    /// Lua. Returns once it answers.
    pub fn start_forwarder(
        &self,
        server: Server,
        ns: &str,
        name: &str,
        listen: &[IpAddr],
        forward_to: &[IpAddr],
        extra: &str,
    ) -> Result<Proc> {
        if forward_to.is_empty() {
            bail!("{name}: nothing to forward to");
        }
        match server {
            Server::Dnsmasq => {
                let servers: Vec<String> =
                    forward_to.iter().map(|a| format!("--server={a}")).collect();
                let mut args: Vec<&str> = servers.iter().map(String::as_str).collect();
                args.extend(extra.split_whitespace());
                self.start_dnsmasq(ns, name, listen, &args)
            }
            Server::Unbound => {
                let lines: String = extra
                    .lines()
                    .map(|l| format!("    {}\n", l.trim()))
                    .collect();
                self.start_unbound(ns, name, listen, forward_to, &lines)
            }
            Server::Bind => self.start_named_forwarder(ns, name, listen, forward_to, extra),
            Server::Knot => self.start_kresd(ns, name, listen, forward_to, extra),
        }
    }

    /// BIND `named -g -u root` as a forwarder: recursion for anyone, `forward
    /// only` to `forward_to`, no DNSSEC validation, no cache of TTL 0 records.
    /// `extra_options` is appended to the `options` block.
    pub fn start_named_forwarder(
        &self,
        ns: &str,
        name: &str,
        listen: &[IpAddr],
        forward_to: &[IpAddr],
        extra_options: &str,
    ) -> Result<Proc> {
        check_listen(name, listen)?;
        let work = self.dir().join(name);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let work_s = work.display().to_string();
        let forwarders: String = forward_to.iter().map(|a| format!("{a}; ")).collect();
        let conf = format!(
            "options {{\n\
             \x20   directory \"{work_s}\";\n\
             \x20   pid-file \"{work_s}/named.pid\";\n\
             \x20   session-keyfile \"{work_s}/session.key\";\n\
             \x20   managed-keys-directory \"{work_s}\";\n\
             \x20   listen-on port 53 {{ {v4} }};\n\
             \x20   listen-on-v6 port 53 {{ {v6} }};\n\
             \x20   recursion yes;\n\
             \x20   allow-recursion {{ any; }};\n\
             \x20   allow-query {{ any; }};\n\
             \x20   allow-query-cache {{ any; }};\n\
             \x20   forward only;\n\
             \x20   forwarders {{ {forwarders}}};\n\
             \x20   dnssec-validation no;\n\
             \x20   notify no;\n\
             {extra_options}\n\
             }};\n\
             controls {{ }};\n\
             logging {{ category queries {{ default_stderr; }}; }};\n",
            v4 = listen_list(listen, false),
            v6 = listen_list(listen, true),
        );
        let conf_path = self.write_file(&format!("{name}.conf"), &conf)?;
        let mut cmd = self.cmd(ns, "named");
        cmd.args(["-g", "-u", "root", "-n", "1", "-c"])
            .arg(&conf_path);
        let proc = self.spawn_logged(name, cmd)?;
        self.wait_all_ready(ns, listen, &proc)?;
        Ok(proc)
    }

    /// Knot Resolver `kresd -n` as a forwarder (`policy.STUB`: no DNSSEC, no
    /// iteration), cache minimum TTL 0, no root priming or time-skew probes
    /// (they would be forwarded too), no 0x20 case randomisation (dnsmasq
    /// answers a merged retry in the first query's case, which kresd would
    /// drop), working directory `<lab dir>/<name>`.
    /// `extra_lua` is appended to its configuration.
    pub fn start_kresd(
        &self,
        ns: &str,
        name: &str,
        listen: &[IpAddr],
        forward_to: &[IpAddr],
        extra_lua: &str,
    ) -> Result<Proc> {
        check_listen(name, listen)?;
        let work = self.dir().join(name);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let mut conf = String::new();
        for addr in listen {
            let _ = writeln!(conf, "net.listen('{addr}', 53, {{ kind = 'dns' }})");
        }
        let targets: Vec<String> = forward_to.iter().map(|a| format!("'{a}'")).collect();
        let _ = write!(
            conf,
            "net.ipv6 = {ip6}\n\
             trust_anchors.remove('.')\n\
             modules.unload('priming')\n\
             modules.unload('detect_time_skew')\n\
             modules.unload('detect_time_jump')\n\
             cache.size = 10 * MB\n\
             cache.min_ttl(0)\n\
             log_level('info')\n\
             policy.add(policy.all(policy.FLAGS('NO_0X20')))\n\
             policy.add(policy.all(policy.STUB({{ {targets} }})))\n\
             {extra_lua}\n",
            ip6 = listen.iter().chain(forward_to).any(IpAddr::is_ipv6),
            targets = targets.join(", "),
        );
        let conf_path = self.write_file(&format!("{name}.lua"), &conf)?;
        let mut cmd = self.cmd(ns, "kresd");
        cmd.arg("-n").arg("-c").arg(&conf_path).arg(&work);
        let proc = self.spawn_logged(name, cmd)?;
        self.wait_all_ready(ns, listen, &proc)?;
        Ok(proc)
    }

    fn wait_all_ready(&self, ns: &str, listen: &[IpAddr], proc: &Proc) -> Result<()> {
        for addr in listen {
            self.wait_dns_ready(ns, *addr, proc, READY_TIMEOUT)
                .with_context(|| format!("starting {} in {ns}", proc.name))?;
        }
        Ok(())
    }
}

/// BIND's `listen-on` (`v6`: `listen-on-v6`) list for `listen`.
fn listen_list(listen: &[IpAddr], v6: bool) -> String {
    let addrs: Vec<String> = listen
        .iter()
        .filter(|a| a.is_ipv6() == v6)
        .map(|a| format!("{a};"))
        .collect();
    if addrs.is_empty() {
        "none;".to_owned()
    } else {
        addrs.join(" ")
    }
}

fn check_listen(name: &str, listen: &[IpAddr]) -> Result<()> {
    if listen.is_empty() {
        bail!("{name}: no listen address");
    }
    Ok(())
}
