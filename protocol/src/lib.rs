//! Sans-IO wire formats shared by `kernel-launcher` and the gateway side.
