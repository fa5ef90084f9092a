// Signs a manifest digest keylessly against an offline Sigstore (the npm @sigstore/mock
// Fulcio, CT log and Rekor on 127.0.0.1), and writes what a registry and a user would hold:
//
//   node e2e/sigstore/sign.mjs --out DIR --digest sha256:<hex> [--issuer URL]
//        [--subject URI] [--reference REPO] [--manifest FILE]
//
// Two options make invalid signatures for tests: --legacy-issuer URL writes another issuer
// in the certificate's legacy extension (1.3.6.1.4.1.57264.1.1), --log-delay SECONDS puts
// Rekor's clock ahead (the certificate has expired when the entry is logged).
//
// DIR/trusted_root.json     this run's CA, Rekor and CT log (a fresh CA every run)
// DIR/classic/payload.json  cosign's simple-signing payload for the digest (the signed bytes)
// DIR/classic/annotations.json  the classic .sig layer's annotations
// DIR/bundle-v03.json       cosign v3's shape: DSSE in-toto statement, Rekor entry intoto 0.0.2
// DIR/bundle-v02.json       with --manifest: a message signature over the manifest bytes
//
// Modules come from target/sigstore/node_modules (e2e/deps.sh installs them), whatever the cwd.
import { createRequire } from 'node:module';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const modules = resolve(here, '../../target/sigstore/node_modules');
const require = createRequire(join(modules, 'noop.js'));
const mock = require('@sigstore/mock');
const sign = require('@sigstore/sign');
const { bundleToJSON } = require('@sigstore/bundle');

const IN_TOTO = 'application/vnd.in-toto+json';
const COSIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1';

function options() {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      digest: { type: 'string' },
      issuer: { type: 'string', default: 'https://token.actions.githubusercontent.com' },
      subject: {
        type: 'string',
        default: 'https://github.com/example/rules/.github/workflows/release.yaml@refs/tags/v1',
      },
      reference: { type: 'string', default: 'registry.local/rules' },
      manifest: { type: 'string' },
      'legacy-issuer': { type: 'string' },
      'log-delay': { type: 'string', default: '0' },
    },
  });
  if (!values.out) throw new Error('--out DIR is required');
  if (!/^sha256:[0-9a-f]{64}$/.test(values.digest ?? '')) {
    throw new Error('--digest sha256:<64 hex> is required');
  }
  return values;
}

// A loopback server dispatching to the mock handlers ({path, fn(body)}).
async function serve(handlers) {
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const h = handlers.find((x) => req.url.startsWith(x.path));
      if (!h) {
        res.writeHead(404).end();
        return;
      }
      const r = await h.fn(Buffer.concat(chunks).toString());
      res.writeHead(r.statusCode, { 'content-type': r.contentType ?? 'text/plain' });
      res.end(r.response);
    });
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { server, url: `http://127.0.0.1:${server.address().port}` };
}

// An unsigned JWT: the strict mock decodes it without checking a signature.
function token(iss, sub) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const exp = Math.floor(Date.now() / 1000) + 600;
  return `${part({ alg: 'none', typ: 'JWT' })}.${part({ iss, sub, aud: 'sigstore', exp })}.`;
}

function trustedRoot(ca, tlog, ctlog, rekorURL) {
  const b64 = (b) => Buffer.from(b).toString('base64');
  const start = new Date(Date.now() - 3600 * 1000).toISOString();
  const key = (raw) => ({ rawBytes: b64(raw), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start } });
  return {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [{
      // the log's address: its checkpoints name it as their origin
      baseUrl: rekorURL,
      hashAlgorithm: 'SHA2_256',
      publicKey: key(tlog.publicKey),
      logId: { keyId: b64(createHash('sha256').update(tlog.publicKey).digest()) },
    }],
    certificateAuthorities: [{
      subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
      uri: 'https://fulcio.sigstore.mock',
      certChain: { certificates: [{ rawBytes: b64(ca.rootCertificate) }] },
      validFor: { start },
    }],
    ctlogs: [{
      baseUrl: 'https://ctfe.sigstore.mock',
      hashAlgorithm: 'SHA2_256',
      publicKey: key(ctlog.publicKey),
      logId: { keyId: b64(ctlog.logID) },
    }],
    timestampAuthorities: [],
  };
}

function pem(b64der) {
  const lines = b64der.match(/.{1,64}/g).join('\n');
  return `-----BEGIN CERTIFICATE-----\n${lines}\n-----END CERTIFICATE-----\n`;
}

// cosign's classic .sig layer annotations, from a v0.2 message-signature bundle over the payload.
function classicAnnotations(bundle, caRoot) {
  const vm = bundle.verificationMaterial;
  const entry = vm.tlogEntries[0];
  const rekor = {
    SignedEntryTimestamp: entry.inclusionPromise.signedEntryTimestamp,
    Payload: {
      body: entry.canonicalizedBody,
      integratedTime: Number(entry.integratedTime),
      logIndex: Number(entry.logIndex),
      logID: Buffer.from(entry.logId.keyId, 'base64').toString('hex'),
    },
  };
  return {
    'dev.cosignproject.cosign/signature': bundle.messageSignature.signature,
    'dev.sigstore.cosign/certificate': pem(vm.x509CertificateChain.certificates[0].rawBytes),
    'dev.sigstore.cosign/chain': pem(Buffer.from(caRoot).toString('base64')),
    'dev.sigstore.cosign/bundle': JSON.stringify(rekor),
  };
}

function simpleSigning(reference, digest) {
  return JSON.stringify({
    critical: {
      identity: { 'docker-reference': reference },
      image: { 'docker-manifest-digest': digest },
      type: 'cosign container image signature',
    },
    optional: null,
  });
}

function statement(digest) {
  return JSON.stringify({
    _type: 'https://in-toto.io/Statement/v1',
    subject: [{ name: '', digest: { sha256: digest.slice('sha256:'.length) } }],
    predicateType: COSIGN_PREDICATE,
    predicate: {},
  });
}

// The mock CA, optionally writing `legacy` as the .1.1 issuer.
function withLegacyIssuer(ca, legacy) {
  if (!legacy) return ca;
  const oid = '1.3.6.1.4.1.57264.1.1';
  return {
    get rootCertificate() { return ca.rootCertificate; },
    issueCertificate: (req) => ca.issueCertificate({
      ...req,
      extensions: (req.extensions ?? []).map((e) => (e.oid === oid ? { ...e, value: legacy } : e)),
    }),
  };
}

async function main() {
  const o = options();
  const keys = () => generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const handlers = [];
  const { server, url } = await serve(handlers);
  try {
    const ctlog = await mock.initializeCTLog(keys());
    const ca = await mock.initializeCA(keys(), ctlog);
    const delay = Number(o['log-delay']) * 1000;
    const clock = delay ? new Date(Date.now() + delay) : undefined;
    const tlog = await mock.initializeTLog(url, keys(), clock);
    handlers.push(
      mock.fulcioHandler(withLegacyIssuer(ca, o['legacy-issuer'])),
      mock.rekorHandler(tlog),
    );
    const jwt = token(o.issuer, o.subject);
    const signer = new sign.FulcioSigner({
      fulcioBaseURL: url,
      identityProvider: { getToken: async () => jwt },
    });
    const rekor = (entryType) => new sign.RekorWitness({ rekorBaseURL: url, entryType });
    const messages = new sign.MessageSignatureBundleBuilder({ signer, witnesses: [rekor()] });
    const dsse = new sign.DSSEBundleBuilder({
      signer, witnesses: [rekor('intoto')], certificateChain: false,
    });

    const out = resolve(o.out);
    mkdirSync(join(out, 'classic'), { recursive: true });
    const write = (name, text) => writeFileSync(join(out, name), text);
    write('trusted_root.json', JSON.stringify(trustedRoot(ca, tlog, ctlog, url), null, 2) + '\n');

    const payload = Buffer.from(simpleSigning(o.reference, o.digest));
    const classic = bundleToJSON(await messages.create({ data: payload }));
    write('classic/payload.json', payload);
    write('classic/annotations.json',
      JSON.stringify(classicAnnotations(classic, ca.rootCertificate), null, 2) + '\n');

    const v03 = await dsse.create({ data: Buffer.from(statement(o.digest)), type: IN_TOTO });
    write('bundle-v03.json', JSON.stringify(bundleToJSON(v03), null, 2) + '\n');

    if (o.manifest) {
      const v02 = await messages.create({ data: readFileSync(o.manifest) });
      write('bundle-v02.json', JSON.stringify(bundleToJSON(v02), null, 2) + '\n');
    }
  } finally {
    server.close();
  }
}

main().catch((e) => {
  console.error(`sign.mjs: ${e.message ?? e}`);
  process.exit(1);
});
