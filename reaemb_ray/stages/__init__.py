"""Pipeline stages; each module has main(cfg, args)."""
