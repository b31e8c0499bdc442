//! Desired vs observed -> minimal changes, applied through a [`Kernel`].

use super::kernel::Kernel;
use super::nl::NlError;
use super::plan::{self, Changes, Desired};

/// Which of tsbridge's objects a pass looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// The policy rules.
    pub rules: bool,
    /// The nftables table.
    pub nft: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        rules: true,
        nft: true,
    };

    pub fn is_empty(self) -> bool {
        !self.rules && !self.nft
    }
}

/// One dump-diff-apply pass over everything. Idempotent: a second pass right after finds
/// nothing to do.
pub fn reconcile(k: &mut dyn Kernel, desired: &Desired) -> Result<Changes, NlError> {
    reconcile_parts(k, desired, Parts::ALL)
}

/// A pass over some parts only: the others are neither dumped nor touched. Rules are
/// added before any is deleted (see [`Changes`] for why and in which order).
pub fn reconcile_parts(
    k: &mut dyn Kernel,
    desired: &Desired,
    parts: Parts,
) -> Result<Changes, NlError> {
    let mut ch = Changes::default();
    if parts.rules {
        let rules = k.dump_rules()?;
        (ch.del_rules, ch.add_rules) = plan::diff_rules(&desired.rules, &rules);
    }
    if parts.nft {
        let nft = k.dump_nft()?;
        ch.nft = plan::diff_nft(desired.chains.as_deref(), &nft);
    }
    apply(k, &ch)?;
    Ok(ch)
}

/// Removes exactly what tsbridge owns: rules with its protocol and its table.
pub fn teardown(k: &mut dyn Kernel) -> Result<Changes, NlError> {
    let rules = k.dump_rules()?;
    let nft = k.dump_nft()?;
    let ch = plan::teardown(&rules, &nft);
    apply(k, &ch)?;
    Ok(ch)
}

fn apply(k: &mut dyn Kernel, ch: &Changes) -> Result<(), NlError> {
    for r in &ch.add_rules {
        k.add_rule(r)?;
    }
    for r in &ch.del_rules {
        k.del_rule(r)?;
    }
    if !ch.nft.is_empty() {
        k.apply_nft(&ch.nft)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::kernel::fake::FakeKernel;
    use crate::egress::plan::*;

    fn cfg() -> EgressConfig {
        EgressConfig {
            lab_subnets: vec!["192.168.50.0/24".parse().unwrap()],
            pod_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            snat: true,
            mss_clamp: true,
            tun: "tailscale0".into(),
        }
    }

    fn tailscale_rules() -> Vec<ObservedRule> {
        [5210u32, 5230, 5250, 5270]
            .into_iter()
            .map(|p| ObservedRule {
                rule: PolicyRule {
                    priority: p,
                    dst: "0.0.0.0/0".parse().unwrap(),
                    action: RuleAction::Lookup(52),
                },
                protocol: 0,
                foreign_shape: true,
            })
            .collect()
    }

    #[test]
    fn converges_and_is_idempotent() {
        let d = desired(&cfg());
        let mut k = FakeKernel {
            rules: tailscale_rules(),
            ..Default::default()
        };
        let ch = reconcile(&mut k, &d).unwrap();
        assert_eq!(ch.add_rules.len(), 6);
        assert_eq!(k.calls.len(), 7, "{:?}", k.calls);
        k.calls.clear();
        let ch = reconcile(&mut k, &d).unwrap();
        assert!(ch.is_empty());
        assert!(
            k.calls.is_empty(),
            "no kernel writes when in sync: {:?}",
            k.calls
        );
    }

    #[test]
    fn upgrade_from_lookup_main_guards_adds_the_new_shape_before_removing_the_old() {
        let d = desired(&cfg());
        let old: Vec<ObservedRule> = d
            .rules
            .iter()
            .filter(|r| matches!(r.action, RuleAction::Goto(_)))
            .map(|r| ObservedRule {
                rule: PolicyRule {
                    action: RuleAction::Lookup(TABLE_MAIN),
                    ..r.clone()
                },
                protocol: RT_PROTO,
                foreign_shape: false,
            })
            .collect();
        let mut k = FakeKernel {
            rules: tailscale_rules().into_iter().chain(old).collect(),
            ..Default::default()
        };
        reconcile(&mut k, &d).unwrap();
        let rule_calls: Vec<&str> = k
            .calls
            .iter()
            .filter(|c| c.contains(" rule "))
            .map(String::as_str)
            .collect();
        assert_eq!(
            rule_calls,
            [
                "add rule 5300: (IPv4) nop",
                "add rule 5300: (IPv6) nop",
                "add rule 5100: to 192.168.50.0/24 goto 5300",
                "add rule 5110: to 10.244.0.0/16 goto 5300",
                "add rule 5110: to fd00:10:244::/56 goto 5300",
                "add rule 5120: to 10.96.0.0/12 goto 5300",
                "del rule 5100: to 192.168.50.0/24 lookup 254",
                "del rule 5110: to 10.244.0.0/16 lookup 254",
                "del rule 5110: to fd00:10:244::/56 lookup 254",
                "del rule 5120: to 10.96.0.0/12 lookup 254",
            ]
        );
        let mut want = tailscale_rules();
        want.extend(d.rules.iter().map(|r| ObservedRule {
            rule: r.clone(),
            protocol: RT_PROTO,
            foreign_shape: false,
        }));
        assert_eq!(k.rules, want);
    }

    #[test]
    fn restart_adopts_instead_of_duplicating() {
        let d = desired(&cfg());
        let mut k = FakeKernel::default();
        reconcile(&mut k, &d).unwrap();
        let before_rules = k.rules.clone();
        let before_nft = k.nft.clone();
        // A new process: only the kernel state survives.
        k.calls.clear();
        reconcile(&mut k, &d).unwrap();
        assert_eq!(k.rules, before_rules);
        assert_eq!(k.nft, before_nft);
        assert!(k.calls.is_empty());
    }

    #[test]
    fn repairs_deletions_by_anyone() {
        let d = desired(&cfg());
        let mut k = FakeKernel::default();
        reconcile(&mut k, &d).unwrap();
        let good_nft = k.nft.clone();
        k.nft = None;
        k.rules.remove(2);
        k.calls.clear();
        reconcile(&mut k, &d).unwrap();
        assert_eq!(k.calls.len(), 2, "{:?}", k.calls);
        assert_eq!(k.rules.len(), 6);
        let tags = |n: &ObservedNft| -> Vec<Option<String>> {
            n.as_ref()
                .unwrap()
                .iter()
                .flat_map(|c| c.rules.iter().map(|r| r.1.clone()))
                .collect()
        };
        assert_eq!(tags(&k.nft), tags(&good_nft));
    }

    #[test]
    fn teardown_leaves_tailscale_alone() {
        let d = desired(&cfg());
        let mut k = FakeKernel {
            rules: tailscale_rules(),
            ..Default::default()
        };
        reconcile(&mut k, &d).unwrap();
        super::teardown(&mut k).unwrap();
        assert_eq!(k.rules, tailscale_rules());
        assert_eq!(k.nft, None);
        k.calls.clear();
        let ch = super::teardown(&mut k).unwrap();
        assert!(
            ch.is_empty() && k.calls.is_empty(),
            "teardown twice is harmless"
        );
    }

    #[test]
    fn a_pass_over_one_part_leaves_the_other_alone() {
        let d = desired(&cfg());
        let mut k = FakeKernel::default();
        reconcile(&mut k, &d).unwrap();
        k.nft = None;
        k.rules.remove(0);
        k.calls.clear();
        let only_nft = Parts {
            rules: false,
            nft: true,
        };
        let ch = reconcile_parts(&mut k, &d, only_nft).unwrap();
        assert!(ch.add_rules.is_empty() && !ch.nft.is_empty());
        assert_eq!(k.calls, ["nft batch of 7"]);
        assert_eq!(k.rules.len(), d.rules.len() - 1, "rules were not looked at");
        let only_rules = Parts {
            rules: true,
            nft: false,
        };
        k.calls.clear();
        let ch = reconcile_parts(&mut k, &d, only_rules).unwrap();
        assert_eq!(ch.add_rules.len(), 1);
        assert_eq!(k.calls.len(), 1, "{:?}", k.calls);
        assert!(
            Parts::ALL.rules
                && !Parts {
                    rules: false,
                    nft: false
                }
                .rules
        );
    }

    #[test]
    fn a_failed_batch_changes_nothing_and_is_retried() {
        let d = desired(&cfg());
        let mut k = FakeKernel {
            fail_nft: true,
            ..Default::default()
        };
        assert!(reconcile(&mut k, &d).is_err());
        assert_eq!(k.nft, None);
        k.fail_nft = false;
        reconcile(&mut k, &d).unwrap();
        assert!(k.nft.is_some());
        assert_eq!(k.rules.len(), 6, "rules are not duplicated by the retry");
    }
}
