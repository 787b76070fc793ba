//! Backends execute forward batches on a device.
