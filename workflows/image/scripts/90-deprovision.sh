# Last step before generalizing: the Azure agent forgets this VM (host keys, DHCP leases, the admin
# user), as Azure requires of a Linux VM captured as a Generalized image. Nothing to do on the emulator.
if on_azure && command -v waagent >/dev/null 2>&1; then
  sync
  waagent -deprovision+user -force
  say "deprovisioned"
else
  say "emulator: no waagent deprovision"
fi
