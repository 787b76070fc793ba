//! Weight loading.
