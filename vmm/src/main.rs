//! The `carapace-vmm` binary: boots one microVM from a config file or flags.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("carapace-vmm is not implemented yet (the VMM issue builds it)")
}
