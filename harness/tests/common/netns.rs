//! Network namespaces for the end-to-end tests: a network that looks like the one a
//! phone lives on, made of real interfaces and real routes.
//!
//! ```text
//!              wifi   10.1.1.0/24 ┐                 ┌ 10.2.1.0/24  wifi
//!   device A                      ├── router ───────┤                   device B
//!              mobile 10.1.2.0/24 ┘     │           └ 10.2.2.0/24  mobile
//!                                       │ 10.0.0.0/24
//!                                     relay (10.0.0.2)
//! ```
//!
//! Every namespace is held open by a sleeping `unshare -n` process ([`Netns`]); when its
//! guard drops the process is killed and the kernel removes the namespace with its
//! interfaces, so a failing test leaves nothing behind. On device `d` (A = 1, B = 2)
//! uplink `u` (wifi = 1, mobile = 2) is the subnet `10.d.u.0/24`: the router is `.1`,
//! the device `.2`. A device is *on* an uplink when the uplink has its address and the
//! default route goes through it; changing networks is what a phone does: the old
//! address goes away, the new one comes with a default route
//! ([`Device::switch_command`]). Devices ignore routes over a link without carrier
//! (`ignore_routes_with_linkdown`), as a phone's OS stops using a network it lost, so a
//! link that goes down while its address stays ([`Topology::link_down`]) leaves traffic
//! to the other uplink. Loss is an nftables rule on the router's forward hook
//! ([`Topology::set_loss`]), both ways, for every forwarded packet.
//!
//! [`NatTopology`] puts every uplink of each device behind a NAT of its own (an nftables
//! `masquerade` in a namespace between the device and the router, port-preserving or
//! port-randomising, [`NatPorts`]), both devices on the same private subnets, the relay
//! on the public side.
//!
//! Needs `unshare`, `nsenter`, `ip` (iproute2), `nft` (nftables) and the right to create
//! network namespaces: [`require_tools`] fails the test and names what is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{command, Proc};

/// Whether `program args…` runs and succeeds (its output dropped).
pub fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails the test, saying what is missing, unless this machine can build the topology.
/// CI installs `nftables` and `iproute2` itself (`.ci/run`) and runs as root.
pub fn require_tools() {
    let missing: Vec<&str> = [
        ("unshare (util-linux)", works("unshare", &["--version"])),
        ("nsenter (util-linux)", works("nsenter", &["--version"])),
        ("ip (iproute2)", works("ip", &["-V"])),
        ("nft (nftables)", works("nft", &["--version"])),
        (
            "the right to create a network namespace (unshare -n)",
            works("unshare", &["-n", "true"]),
        ),
        (
            "nftables in a fresh namespace (kernel nf_tables)",
            works("unshare", &["-n", "nft", "list", "ruleset"]),
        ),
    ]
    .into_iter()
    .filter_map(|(what, ok)| (!ok).then_some(what))
    .collect();
    assert!(
        missing.is_empty(),
        "this machine cannot build the namespace topology; missing: {} (the test cannot run \
         where it is meant to: CI runs as root and .ci/run installs nftables and iproute2)",
        missing.join(", ")
    );
}

/// One network namespace, held open by a sleeping process killed on drop.
pub struct Netns {
    /// Kept for its drop: the namespace lives as long as this process.
    _holder: Proc,
    pid: String,
    dir: PathBuf,
    name: String,
}

impl Netns {
    /// A fresh namespace with only `lo`, up. Its processes run in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        // The holder outlives any test by far; it is killed when the guard drops.
        let holder = Proc::start(
            dir,
            &format!("netns-{name}"),
            "unshare",
            &["-n", "--", "sleep", "900"],
        );
        let ns = Self {
            pid: holder.pid().to_string(),
            _holder: holder,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        // `unshare` may not have entered the namespace yet: wait until `nsenter` finds
        // one whose only interface is lo.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let links = ns.output(&["ip", "-o", "link"]);
            if links.status.success() && String::from_utf8_lossy(&links.stdout).lines().count() == 1
            {
                break;
            }
            assert!(Instant::now() < until, "namespace {name} not ready");
            std::thread::yield_now();
        }
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The pid whose namespace this is (what `ip link … netns PID` takes).
    pub fn pid(&self) -> &str {
        &self.pid
    }

    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["-t", self.pid.as_str(), "-n", "--"];
        all.extend_from_slice(args);
        all
    }

    /// `args` run in the namespace, not waited for.
    pub fn command(&self, args: &[&str]) -> Command {
        command(&self.dir, "nsenter", &self.argv(args))
    }

    /// `args` run in the namespace to completion.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `args` run in the namespace; panics with the stderr if they fail.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "in namespace {}: {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A shell script run in the namespace (`set -e`: the first failing line fails it).
    pub fn sh(&self, script: &str) -> String {
        self.run(&["sh", "-ec", script])
    }

    /// A long-running `program args…` in the namespace, killed on drop.
    pub fn spawn(&self, name: &str, program: &str, args: &[&str]) -> Proc {
        let mut all = vec![program];
        all.extend_from_slice(args);
        Proc::start(&self.dir, name, "nsenter", &self.argv(&all))
    }
}

/// A device's two networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    Wifi,
    Mobile,
}

impl Uplink {
    /// The interface's name on the device.
    pub fn name(self) -> &'static str {
        match self {
            Uplink::Wifi => "wifi",
            Uplink::Mobile => "mobile",
        }
    }

    fn index(self) -> u8 {
        match self {
            Uplink::Wifi => 1,
            Uplink::Mobile => 2,
        }
    }
}

/// Device A or B: a namespace with two uplinks, each a /24 whose `.1` is the gateway
/// (the router, or the uplink's NAT) and `.2` the device.
pub struct Device {
    /// Its namespace.
    pub ns: Netns,
    /// `a` or `b`.
    pub name: &'static str,
    /// The first three octets of the wifi and the mobile subnet.
    prefixes: [String; 2],
}

impl Device {
    /// A device on the routed topology: uplink `u` of device `index` is `10.index.u.0/24`.
    fn routed(ns: Netns, name: &'static str, index: u8) -> Self {
        let prefixes = [Uplink::Wifi, Uplink::Mobile].map(|u| format!("10.{index}.{}", u.index()));
        Self { ns, name, prefixes }
    }

    fn prefix(&self, uplink: Uplink) -> &str {
        &self.prefixes[usize::from(uplink.index() - 1)]
    }

    /// The device's address on `uplink` (`.2` of its subnet).
    pub fn address(&self, uplink: Uplink) -> String {
        format!("{}.2", self.prefix(uplink))
    }

    /// The gateway's address on `uplink` (`.1` of its subnet).
    pub fn gateway(&self, uplink: Uplink) -> String {
        format!("{}.1", self.prefix(uplink))
    }

    /// The name of the router's end of `uplink` (`a-wifi`, …).
    pub fn router_side(&self, uplink: Uplink) -> String {
        format!("{}-{}", self.name, uplink.name())
    }

    /// The script that gets the device on `uplink`: its address, and a default route
    /// through it with `metric` (the lowest metric carries the traffic).
    fn join_script(&self, uplink: Uplink, metric: u32) -> String {
        format!(
            "ip addr add {}/24 dev {}\nip route add default via {} metric {metric}\n",
            self.address(uplink),
            uplink.name(),
            self.gateway(uplink)
        )
    }

    /// Gets the device on `uplink` as well (address and default route, `metric`).
    pub fn join(&self, uplink: Uplink, metric: u32) {
        self.ns.sh(&self.join_script(uplink, metric));
    }

    /// The command that moves the device from `from` to `to` as a phone does: the old
    /// network's address goes (its routes with it), the new one's address and default
    /// route come. Spawn it to run two devices' moves at once.
    pub fn switch_command(&self, from: Uplink, to: Uplink) -> Command {
        let script = format!(
            "ip addr del {}/24 dev {}\n{}",
            self.address(from),
            from.name(),
            self.join_script(to, 100)
        );
        self.ns.command(&["sh", "-ec", &script])
    }
}

/// Moves each of `devices` from `from` to `to` at the same moment: every move
/// ([`Device::switch_command`]) is one shell in its device's namespace, all started
/// before any is waited for. Panics with a move's stderr if it fails.
pub fn switch_at_once(devices: &[&Device], from: Uplink, to: Uplink) {
    let moves: Vec<_> = devices
        .iter()
        .map(|device| {
            device
                .switch_command(from, to)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for m in moves {
        let out = m.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What both topologies finish with: the router runs `router_script` and its link to
/// the relay (`10.0.0.1` on its side; [`Topology::RELAY_IP`] on the relay's, with the
/// default route through the router), then both uplinks of each device come up, the
/// device ignoring routes over a link without carrier.
fn wire(router: &Netns, mut router_script: String, relay: &Netns, devices: [&Device; 2]) {
    router_script += &format!(
        "ip link add relay type veth peer name eth0 netns {}\n\
         ip addr add 10.0.0.1/24 dev relay\nip link set relay up\n",
        relay.pid()
    );
    router.sh(&router_script);
    relay.sh(&format!(
        "ip addr add {}/24 dev eth0\nip link set eth0 up\nip route add default via 10.0.0.1\n",
        Topology::RELAY_IP
    ));
    for device in devices {
        device.ns.sh(
            "echo 1 > /proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown\n\
             ip link set wifi up\nip link set mobile up\n",
        );
    }
}

/// The router, the relay's namespace and devices A and B, wired and routed.
pub struct Topology {
    /// Forwards between every subnet; where loss is added.
    pub router: Netns,
    /// Where the relay runs, at [`Topology::RELAY_IP`].
    pub relay: Netns,
    /// Device A.
    pub a: Device,
    /// Device B.
    pub b: Device,
}

impl Topology {
    /// The relay's address.
    pub const RELAY_IP: &'static str = "10.0.0.2";

    /// Builds the namespaces and links. Both uplinks of each device are up (carrier on)
    /// but have no address yet: [`Device::join`] puts a device on a network.
    pub fn build(dir: &Path) -> Self {
        require_tools();
        let router = Netns::new(dir, "router");
        let relay = Netns::new(dir, "relay");
        let a = Device::routed(Netns::new(dir, "a"), "a", 1);
        let b = Device::routed(Netns::new(dir, "b"), "b", 2);
        let mut script = String::from("echo 1 > /proc/sys/net/ipv4/ip_forward\n");
        for device in [&a, &b] {
            for uplink in [Uplink::Wifi, Uplink::Mobile] {
                let outer = device.router_side(uplink);
                script += &format!(
                    "ip link add {outer} type veth peer name {} netns {}\n\
                     ip addr add {}/24 dev {outer}\nip link set {outer} up\n",
                    uplink.name(),
                    device.ns.pid(),
                    device.gateway(uplink)
                );
            }
        }
        wire(&router, script, &relay, [&a, &b]);
        Self {
            router,
            relay,
            a,
            b,
        }
    }

    /// Drops `percent` % of the packets the router forwards, at random, both ways (0
    /// removes the rule).
    pub fn set_loss(&self, percent: u32) {
        let mut script = String::from(
            "nft add table inet tether_loss\nnft flush table inet tether_loss\n\
             nft add chain inet tether_loss forward '{ type filter hook forward priority 0; }'\n",
        );
        if percent > 0 {
            script += &format!(
                "nft add rule inet tether_loss forward numgen random mod 100 '<' {percent} drop\n"
            );
        }
        self.router.sh(&script);
    }

    /// Takes `device`'s `uplink` down from the router's side: the device keeps its
    /// address there but loses carrier.
    pub fn link_down(&self, device: &Device, uplink: Uplink) {
        self.router
            .run(&["ip", "link", "set", &device.router_side(uplink), "down"]);
    }
}

/// How a NAT picks the public port of a new mapping (a new conntrack entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatPorts {
    /// `masquerade`: the device's own port when it is free on the public side, so one
    /// socket is seen at one public address and port from every destination
    /// (endpoint-independent mapping, in practice).
    Preserving,
    /// `masquerade fully-random`: a random port for every new mapping, so every
    /// destination sees the socket at another port (port-dependent, "symmetric" mapping).
    Random,
}

impl NatPorts {
    fn flags(self) -> &'static str {
        match self {
            NatPorts::Preserving => "",
            NatPorts::Random => " fully-random",
        }
    }
}

/// The NAT in front of one uplink of one device: a namespace between the device's
/// interface (`lan`, the gateway's address) and the router (`wan`, the public address).
pub struct Nat {
    /// Its namespace.
    pub ns: Netns,
    /// `a-wifi`, …
    pub name: String,
    /// Its address on the public side: what the relay and the peer see the device at.
    pub public: String,
    /// How it maps ports.
    pub ports: NatPorts,
    /// Whether it drops what comes in on `wan` and is no reply (a home router's
    /// firewall), or lets it through to itself (a bare masquerade).
    pub firewall: bool,
}

impl Nat {
    /// The rules: masquerade out of `wan`; from `wan`, only replies to what went out are
    /// forwarded (conntrack: a mapping answers only the address and port it was opened
    /// to). With the firewall, the NAT itself answers nothing on `wan`, as a home
    /// router's does: a packet to its public address that is no reply is dropped, before
    /// conntrack keeps an entry for it. Without, such a packet reaches the NAT itself
    /// (which answers ICMP port unreachable) and conntrack keeps its entry, which then
    /// holds that address and port pair against the NAT's own later mapping. Every rule
    /// counts.
    fn ruleset(&self) -> String {
        let other = if self.firewall { "drop" } else { "accept" };
        format!(
            "table ip tether_nat {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority 100; policy accept;\n\
             \t\toifname \"wan\" counter masquerade{}\n\
             \t}}\n\
             }}\n\
             table inet tether_firewall {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tiifname \"wan\" ct state established,related counter accept\n\
             \t\tiifname \"wan\" counter {other}\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tiifname \"wan\" ct state established,related counter accept\n\
             \t\tiifname \"wan\" counter drop\n\
             \t}}\n\
             }}\n",
            self.ports.flags()
        )
    }

    /// Its rules with their counters, and its conntrack table when `conntrack` is
    /// installed: what it let through and what it dropped.
    pub fn diagnostics(&self) -> String {
        let text = |args: &[&str]| {
            let out = self.ns.output(args);
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let mut report = format!(
            "--- NAT {} (public {}, {:?}, firewall {}):\n{}",
            self.name,
            self.public,
            self.ports,
            self.firewall,
            text(&["nft", "list", "ruleset"])
        );
        if works("conntrack", &["--version"]) {
            report += &text(&["conntrack", "-L", "-p", "udp"]);
        }
        report
    }
}

/// Devices A and B behind NATs, one per uplink, and the relay on the public side.
///
/// ```text
///            wifi   192.168.1.2 ── NAT a-wifi   (203.0.11.2) ┐
///  device A                                                  │
///            mobile 100.64.0.2  ── NAT a-mobile (203.0.12.2) ┤
///                                                            ├── router ── relay (10.0.0.2)
///            wifi   192.168.1.2 ── NAT b-wifi   (203.0.21.2) │
///  device B                                                  │
///            mobile 100.64.0.2  ── NAT b-mobile (203.0.22.2) ┘
/// ```
///
/// Both devices use the same private subnets (192.168.1.0/24 on wifi, 100.64.0.0/24 on
/// mobile, the NAT at `.1`, the device at `.2`), as two homes and two phones of one
/// carrier do: neither can reach the other's private address. Every NAT has its own
/// public address, `203.0.du.2` (device d, uplink u; the router is `.1`), so a device
/// that changes uplinks is seen at a new public address. The NATs are [`Nat`]s.
pub struct NatTopology {
    /// Routes between the NATs' public sides and the relay.
    pub router: Netns,
    /// Where the relay runs, at [`Topology::RELAY_IP`].
    pub relay: Netns,
    /// Device A.
    pub a: Device,
    /// Device B.
    pub b: Device,
    /// A's wifi, A's mobile, B's wifi and B's mobile NAT.
    pub nats: Vec<Nat>,
}

impl NatTopology {
    /// Builds the namespaces, links, routes and NATs (with a home router's firewall):
    /// A's NATs map ports as `a_ports`, B's as `b_ports`. Both uplinks of each device
    /// are up but have no address yet: [`Device::join`] puts a device on a network.
    pub fn build(dir: &Path, a_ports: NatPorts, b_ports: NatPorts) -> Self {
        Self::build_with(dir, a_ports, b_ports, true)
    }

    /// [`build`](Self::build), the NATs with a firewall or bare masquerades
    /// ([`Nat::firewall`]).
    pub fn build_with(dir: &Path, a_ports: NatPorts, b_ports: NatPorts, firewall: bool) -> Self {
        require_tools();
        let router = Netns::new(dir, "router");
        let relay = Netns::new(dir, "relay");
        let private = || [String::from("192.168.1"), String::from("100.64.0")];
        let a = Device {
            ns: Netns::new(dir, "a"),
            name: "a",
            prefixes: private(),
        };
        let b = Device {
            ns: Netns::new(dir, "b"),
            name: "b",
            prefixes: private(),
        };
        let mut router_script = String::from("echo 1 > /proc/sys/net/ipv4/ip_forward\n");
        let mut nats = Vec::new();
        for (device, index, ports) in [(&a, 1, a_ports), (&b, 2, b_ports)] {
            for uplink in [Uplink::Wifi, Uplink::Mobile] {
                let name = device.router_side(uplink);
                let subnet = format!("203.0.{index}{}", uplink.index());
                let nat = Nat {
                    ns: Netns::new(dir, &format!("nat-{name}")),
                    public: format!("{subnet}.2"),
                    name: name.clone(),
                    ports,
                    firewall,
                };
                let rules = dir.join(format!("nat-{name}.nft"));
                std::fs::write(&rules, nat.ruleset()).unwrap();
                nat.ns.sh(&format!(
                    "echo 1 > /proc/sys/net/ipv4/ip_forward\n\
                     ip link add lan type veth peer name {uplink} netns {device_pid}\n\
                     ip link add wan type veth peer name {name} netns {router_pid}\n\
                     ip addr add {gateway}/24 dev lan\nip link set lan up\n\
                     ip addr add {public}/24 dev wan\nip link set wan up\n\
                     ip route add default via {subnet}.1\n\
                     nft -f {rules}\n",
                    uplink = uplink.name(),
                    device_pid = device.ns.pid(),
                    router_pid = router.pid(),
                    gateway = device.gateway(uplink),
                    public = nat.public,
                    rules = rules.display(),
                ));
                router_script +=
                    &format!("ip addr add {subnet}.1/24 dev {name}\nip link set {name} up\n");
                nats.push(nat);
            }
        }
        wire(&router, router_script, &relay, [&a, &b]);
        Self {
            router,
            relay,
            a,
            b,
            nats,
        }
    }

    /// The NAT in front of `device`'s `uplink`.
    pub fn nat(&self, device: &Device, uplink: Uplink) -> &Nat {
        let name = device.router_side(uplink);
        self.nats.iter().find(|n| n.name == name).unwrap()
    }

    /// Every NAT's [`Nat::diagnostics`].
    pub fn diagnostics(&self) -> String {
        self.nats
            .iter()
            .map(Nat::diagnostics)
            .collect::<Vec<_>>()
            .join("\n")
    }
}
