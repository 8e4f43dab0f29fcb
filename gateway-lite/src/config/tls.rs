//! TLS for the HTTP listener: the certificate, key and client-CA files, read and checked once
//! at start and turned into a rustls server configuration.
//!
//! The files are read at start, not at the first connection, so that a wrong path, a key
//! that belongs to another certificate or a CA bundle without certificates stops the gateway
//! with the file named, instead of failing every handshake afterwards; that is why this is
//! part of the configuration. [`super::listen`] calls [`server_config`] and turns a
//! [`TlsError`] into a configuration error naming the option; the server
//! (`crate::server`) only wraps accepted connections with the result.
//!
//! The crypto provider is `ring`, handed to rustls explicitly (no process-wide default is
//! installed): it builds with nothing but a C compiler, where aws-lc (rustls's default) needs
//! a larger C and assembly build. Its cost: no post-quantum hybrid key exchange, for which
//! rustls marks the ring provider deprecated. Only HTTP/1.1 is offered (ALPN `http/1.1`): the
//! gateway speaks nothing else. With a client CA every client must present a certificate that
//! CA signed (mutual TLS); the token is still required on top of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files TLS is set up from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, then any intermediates.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
    /// CA certificates client certificates must be signed by; `None`: no client certificate
    /// is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Which of the files a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// [`TlsFiles::cert`].
    Cert,
    /// [`TlsFiles::key`].
    Key,
    /// [`TlsFiles::client_ca`].
    ClientCa,
}

/// Why the files cannot serve TLS. Each message names the file and says what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// The error of the read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not well-formed PEM ({detail}); give a PEM file", path.display())]
    Pem {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What the PEM parser found.
        detail: String,
    },
    /// The file holds no certificate.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); {hint}", path.display())]
    NoCertificate {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What to give instead.
        hint: &'static str,
    },
    /// The key file holds no private key.
    #[error("{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY); give the private key of the certificate", path.display())]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key is of a kind or shape the provider cannot sign with.
    #[error("the key in {} cannot be used ({detail}); give an RSA, ECDSA (P-256, P-384) or Ed25519 key", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Why not.
        detail: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error("the key in {} does not belong to the certificate in {}; give the key the certificate was issued for", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate of the client-CA bundle cannot be a trust anchor.
    #[error("{} holds a certificate that cannot be a trust anchor ({detail}); give CA certificates in PEM", path.display())]
    BadCa {
        /// The bundle.
        path: PathBuf,
        /// Why not.
        detail: String,
    },
    /// rustls refused the configuration as a whole.
    #[error("cannot set up TLS with {}: {detail}", file_path.display())]
    Setup {
        /// The file the failing step was about.
        file: TlsFile,
        /// Its path.
        file_path: PathBuf,
        /// rustls's reason.
        detail: String,
    },
}

impl TlsError {
    /// The file the error is about.
    pub fn file(&self) -> TlsFile {
        match self {
            TlsError::Read { file, .. }
            | TlsError::Pem { file, .. }
            | TlsError::NoCertificate { file, .. }
            | TlsError::Setup { file, .. } => *file,
            TlsError::NoKey { .. } | TlsError::BadKey { .. } | TlsError::Mismatch { .. } => {
                TlsFile::Key
            }
            TlsError::BadCa { .. } => TlsFile::ClientCa,
        }
    }
}

/// Reads and checks `files` and builds the server configuration (HTTP/1.1 only).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    // rustls marks its ring provider deprecated because ring has no post-quantum key
    // exchange; ring is kept for a build without aws-lc's C and assembly (see the module).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(
        &files.cert,
        TlsFile::Cert,
        "give the server's certificate in PEM, followed by its intermediates if any",
    )?;
    let key = private_key(&files.key)?;
    check_pair(&provider, files, &certs, key.clone_key())?;
    let setup = |file: TlsFile, path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::Error| TlsError::Setup {
            file,
            file_path: path,
            detail: e.to_string(),
        }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(setup(TlsFile::Cert, &files.cert))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(setup(TlsFile::Key, &files.key))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, file: TlsFile) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        file,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(file: TlsFile, path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        file,
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Every certificate of a PEM file (other sections, such as a key, are passed over).
fn certificates(
    path: &Path,
    file: TlsFile,
    hint: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, file)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(file, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file,
            path: path.to_path_buf(),
            hint,
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, TlsFile::Key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        e => pem_error(TlsFile::Key, path, e),
    })
}

/// That the key can sign and is the one of the first certificate, with an error for each.
fn check_pair(
    provider: &CryptoProvider,
    files: &TlsFiles,
    certs: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: files.key.clone(),
            detail: e.to_string(),
        })?;
    match CertifiedKey::new(certs.to_vec(), signing).keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        // Anything else (a certificate rustls cannot read the public key of, say) is left to
        // the handshake, as rustls itself does.
        _ => Ok(()),
    }
}

/// A verifier that requires a client certificate signed by one of the CAs in `path`.
fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let cas = certificates(
        path,
        TlsFile::ClientCa,
        "give the CA certificates client certificates are signed by, in PEM",
    )?;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Setup {
            file: TlsFile::ClientCa,
            file_path: path.to_path_buf(),
            detail: e.to_string(),
        })
}
