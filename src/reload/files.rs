//! The two sources read straight from the configuration: the config file itself and the scoring
//! listener's certificate pair.

use std::path::PathBuf;

use rustls::sign::CertifiedKey;

use crate::config::{self, Config, ConfigError};
use crate::source::{Fingerprint, Source, Version};
use crate::tls::{self, LoadError};

/// The configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
}

impl Source for ConfigFile {
    type Value = Config;
    type Error = ConfigError;

    fn observe(&self) -> Version {
        vec![Fingerprint::of(&self.path)]
    }

    fn load(&self, _previous: Option<&Config>) -> Result<Config, ConfigError> {
        config::load_and_validate(&self.path)
    }
}

/// The scoring listener's certificate chain and key (`[server.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Source for CertPair {
    type Value = CertifiedKey;
    type Error = LoadError;

    fn observe(&self) -> Version {
        vec![Fingerprint::of(&self.cert), Fingerprint::of(&self.key)]
    }

    fn load(&self, _previous: Option<&CertifiedKey>) -> Result<CertifiedKey, LoadError> {
        tls::load_certified_key(&self.cert, &self.key)
    }
}
