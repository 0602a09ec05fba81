//! Checks of the repository itself, read from its files: the module layering, the rule table
//! of SECURITY.md naming code that exists, and the release record matching the version.

mod layering;
mod release;
mod security_rules;
mod settings_table;
