//! Management writes: each one writes its source (atomically) under the reload lock and then runs
//! a cycle, so the change is applied through the same observe path as an operator's edit, and the
//! call answers only once the state that holds it is published.
//!
//! Before writing, a cycle applies whatever changed on disk since the last poll (the offline CLI,
//! an operator), so a write is made on top of that change, not over it.

use std::sync::{Arc, PoisonError};

use super::sources::Sources;
use super::{Applier, Own, Trigger};
use crate::auth::KeySlot;
use crate::auth::jwt::signing::SigningError;
use crate::auth::keys::{KeyError, NewKeys, Secret};
use crate::policy::{Assignment, AssignmentError};

/// Why a management write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The service is not (or no longer) configured with that kind of source.
    #[error("service {0:?} has no such source")]
    Gone(String),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    Assignments(#[from] AssignmentError),
    #[error("the write task failed")]
    Task,
}

impl Applier {
    /// Runs `write` on the sources between two cycles (see the module docs).
    async fn write<T: Send + 'static>(
        &self,
        own: Own,
        write: impl FnOnce(&Sources) -> Result<T, WriteError> + Send + 'static,
    ) -> Result<T, WriteError> {
        let _serial = self.inner.serial.lock().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut sources = inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
            inner.cycle(&mut sources, &Trigger::Poll);
            let out = write(&sources)?;
            inner.cycle(&mut sources, &Trigger::OwnWrite(own));
            Ok(out)
        })
        .await
        .map_err(|_| WriteError::Task)?
    }

    /// Replaces one key of a key-mode service (generated, or `value`).
    pub async fn regenerate_key(
        &self,
        service: &str,
        slot: KeySlot,
        value: Option<Secret>,
        initiator: &str,
    ) -> Result<NewKeys, WriteError> {
        let (name, initiator) = (service.to_owned(), initiator.to_owned());
        self.write(Own::Keys(name.clone()), move |sources| {
            let watched = sources
                .keys
                .get(&name)
                .ok_or_else(|| WriteError::Gone(name.clone()))?;
            let file = watched.source();
            let current = watched
                .value()
                .keys()
                .ok_or_else(|| WriteError::Gone(name.clone()))?;
            let (_, shown, bytes) = file.regenerate(current, slot, value, &initiator)?;
            file.write(&bytes)?;
            Ok(shown)
        })
        .await
    }

    /// Makes a new signing key the signer of a token-mode service; returns its kid.
    pub async fn rotate_signing_key(
        &self,
        service: &str,
        initiator: &str,
    ) -> Result<Arc<str>, WriteError> {
        let (name, initiator) = (service.to_owned(), initiator.to_owned());
        self.write(Own::Signing(name.clone()), move |sources| {
            let watched = sources
                .signing
                .get(&name)
                .ok_or_else(|| WriteError::Gone(name.clone()))?;
            let file = watched.source();
            let current = watched
                .value()
                .set()
                .ok_or_else(|| WriteError::Gone(name.clone()))?;
            let (_, kid, bytes) = file.rotate(current, &initiator)?;
            file.write(&bytes)?;
            Ok(kid)
        })
        .await
    }

    /// Adds a role assignment made through the API.
    pub async fn add_assignment(&self, assignment: Assignment) -> Result<(), WriteError> {
        self.write(Own::Assignments, move |sources| {
            let mut list = sources.assignments.value().as_ref().clone();
            list.push(assignment);
            sources.assignments.source().write(&list)?;
            Ok(())
        })
        .await
    }

    /// Removes an API role assignment; false when there is none with that id.
    pub async fn remove_assignment(&self, id: &str) -> Result<bool, WriteError> {
        let id = id.to_owned();
        self.write(Own::Assignments, move |sources| {
            let mut list = sources.assignments.value().as_ref().clone();
            let before = list.len();
            list.retain(|a| a.id != id);
            if list.len() == before {
                return Ok(false);
            }
            sources.assignments.source().write(&list)?;
            Ok(true)
        })
        .await
    }
}
