//! Model definition.
