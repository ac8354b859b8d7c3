"""The systemd unit template, shipped as package data (`ferlite.systemd`)."""
