//! Certificates for TLS tests, made with the `openssl` command: a CA per [`Pki`], and leaves it
//! signs with the SANs and extended key usage a test asks for (P-256 keys, valid two days). Each
//! leaf gets a new serial (`-CAcreateserial` counts up in the directory).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA in a temporary directory, and the leaves it signed there.
pub struct Pki {
    dir: tempfile::TempDir,
    openssl: PathBuf,
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Pki {
    /// A new CA, `ca.crt` and `ca.key`, with the common name `name`.
    pub fn new(name: &str) -> Pki {
        let pki = Pki {
            dir: tempfile::Builder::new().prefix("pki-").tempdir().unwrap(),
            openssl: super::require_binary("openssl"),
        };
        let subject = format!("/CN={name}");
        pki.run(
            &[
                &["req", "-x509"][..],
                &EC,
                &[
                    "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", &subject,
                ],
            ]
            .concat(),
        );
        pki
    }

    /// A leaf `name.crt` / `name.key` signed by the CA, with `san` (openssl's syntax, e.g.
    /// `DNS:tollgate,IP:127.0.0.1,URI:spiffe://test/envoy`) and `usage` (`serverAuth`,
    /// `clientAuth`). Returns the certificate's and the key's paths.
    pub fn leaf(&self, name: &str, san: &str, usage: &str) -> (PathBuf, PathBuf) {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.path(&ext),
            format!("subjectAltName={san}\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        let subject = format!("/CN={name}");
        self.run(
            &[
                &["req"][..],
                &EC,
                &["-keyout", &key, "-out", &csr, "-subj", &subject],
            ]
            .concat(),
        );
        self.run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ]);
        (self.path(&crt), self.path(&key))
    }

    /// `file` in the CA's directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The contents of `file` in the CA's directory.
    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(&self.openssl)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
