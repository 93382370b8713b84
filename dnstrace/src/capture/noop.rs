//! The benchmark baseline: a tc classifier that only returns, attached to the
//! same hooks as dnstrace's own programs. With `kernel.bpf_stats_enabled` the
//! kernel's per-program run time includes the cost of reading the clock
//! around every run; subtracting this program's time per run from dnstrace's
//! leaves what dnstrace adds. Only the hidden `dnstrace bench-noop` uses it.
use aya::{
    Ebpf, EbpfLoader,
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};

use super::{CaptureError, check_kernel, raise_memlock};

/// Name of the no-op program in the eBPF object.
pub const PROG_TC_NOOP: &str = "dt_tc_noop";

/// The no-op classifier, attached with tcx (last in the chain) to the
/// interfaces given; dropping it detaches it.
pub struct NoopClassifier {
    _ebpf: Ebpf,
}

impl NoopClassifier {
    /// Attaches to `ifaces` of the current netns: egress, and ingress too
    /// unless `egress_only`.
    pub fn attach(ifaces: &[String], egress_only: bool) -> Result<Self, CaptureError> {
        check_kernel()?;
        raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .load(super::OBJECT)
            .map_err(|e| CaptureError::from_aya("loading the eBPF object", &e))?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_NOOP)
            .ok_or_else(|| CaptureError::Bpf {
                action: "finding the no-op classifier".into(),
                detail: format!("program {PROG_TC_NOOP} missing from the eBPF object"),
            })?
            .try_into()
            .map_err(|e| CaptureError::from_aya(PROG_TC_NOOP, &e))?;
        prog.load()
            .map_err(|e| CaptureError::from_aya(format!("loading {PROG_TC_NOOP}"), &e))?;
        let dirs: &[TcAttachType] = if egress_only {
            &[TcAttachType::Egress]
        } else {
            &[TcAttachType::Ingress, TcAttachType::Egress]
        };
        for iface in ifaces {
            for dir in dirs {
                let opts = TcAttachOptions::TcxOrder(LinkOrder::last());
                prog.attach_with_options(iface, *dir, opts).map_err(|e| {
                    CaptureError::from_aya(format!("attaching {PROG_TC_NOOP} to {iface}"), &e)
                })?;
            }
        }
        Ok(Self { _ebpf: ebpf })
    }
}
