//! Virtual machines: the accelerator choice, the backend interface and the
//! QEMU backend.

pub mod accel;
pub mod backend;
pub mod qemu;

pub use accel::{Accel, AccelChoice, AccelSetting, KvmUnavailable};
pub use backend::{Backend, DiskFiles, GuestRoot, VmConfig, VmError, VmExit, VmHandle};
pub use qemu::QemuBackend;
