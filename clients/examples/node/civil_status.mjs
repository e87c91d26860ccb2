#!/usr/bin/env node
// Civil-status client for the citizen identity registry, in Node.js: registers a birth (and
// gets the child's PIN) or a death. Built from the repository's .proto files alone; it shares
// no code with the server and signs its agency token with `jose` (the server verifies with
// Python's pyjwt).
//
// Usage (`npm ci` in this directory first):
//   node civil_status.mjs birth --target 127.0.0.1:50051 --agency civil-hn --kid k1 \
//       --key agency.pem --name "Nguyễn Văn An" --sex MALE --born 2026-11-20 --province 001
//   node civil_status.mjs death --target 127.0.0.1:50051 --agency civil-hn --kid k1 \
//       --key agency.pem --pin 001226123456 --died 2026-12-01
// Optional everywhere: --request-id ID (idempotency key; default: a new UUID; reuse it when
// you retry), --audience (default citizen-registry), --tls (TLS with the system's CA roots).
//
// Prints one JSON line. Birth: {"pin", "replayed", "full_name", "status"}; death: {"pin",
// "replayed", "status", "date_of_death"}. On a gRPC error: {"error": "INVALID_ARGUMENT",
// "message", "reason", "details"} and exit status 1 (2 for bad command-line arguments).

import { randomUUID, webcrypto } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { SignJWT, importPKCS8 } from "jose";
import protobuf from "protobufjs";

// jose uses the Web Crypto API; Node 18 does not expose it as a global by default.
globalThis.crypto ??= webcrypto;

const HERE = dirname(fileURLToPath(import.meta.url));
const PROTO_DIR = join(HERE, "..", "..", "..", "proto"); // the API: proto/registry/v1, google/type
const VENDORED_PROTO_DIR = join(HERE, "proto"); // google/rpc/error_details.proto (googleapis)

// -- the API ------------------------------------------------------------------------------------

// Load the service definition at run time (no code generation). keepCase keeps the proto's
// snake_case field names; enums come back as their names ("CITIZEN_STATUS_ALIVE").
const packageDefinition = protoLoader.loadSync(
  join(PROTO_DIR, "registry", "v1", "civil_registration_service.proto"),
  { includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const registryV1 = grpc.loadPackageDefinition(packageDefinition).registry.v1;

// -- the agency token ---------------------------------------------------------------------------

// A 5-minute ES256 JWT signed with the agency's private key (PKCS#8 PEM). The registry knows
// the matching public key under (agency id, kid). A long-running system should reuse one token
// for most of its lifetime rather than sign a new one per call.
async function mintToken({ agency, kid, keyFile, audience }) {
  const privateKey = await importPKCS8(readFileSync(keyFile, "utf8"), "ES256");
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg: "ES256", kid })
    .setIssuer(agency)
    .setAudience(audience)
    .setIssuedAt(now)
    .setExpirationTime(now + 300)
    .sign(privateKey);
}

// -- error details ------------------------------------------------------------------------------

// The registry puts a google.rpc.Status in the `grpc-status-details-bin` trailer; its details
// are Any-packed ErrorInfo (reason, e.g. INVALID_FIELDS), BadRequest (every bad field),
// PreconditionFailure, QuotaFailure, RetryInfo. Decode them with protobufjs.
const rpcTypes = new protobuf.Root().loadSync(
  [
    join(PROTO_DIR, "google", "rpc", "status.proto"),
    join(VENDORED_PROTO_DIR, "google", "rpc", "error_details.proto"),
  ],
  { keepCase: true }, // field_violations, retry_delay: the names the .proto files use
);
const toObject = { longs: String, enums: String, defaults: false };

function describeError(error) {
  const out = { error: grpc.status[error.code] ?? String(error.code), message: error.details };
  const [raw] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!raw) return out;
  const status = rpcTypes.lookupType("google.rpc.Status").decode(raw);
  out.details = status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1); // "google.rpc.ErrorInfo"
    const type = rpcTypes.lookupType(typeName);
    return { "@type": typeName, ...type.toObject(type.decode(any.value), toObject) };
  });
  const info = out.details.find((d) => d["@type"] === "google.rpc.ErrorInfo");
  if (info) out.reason = info.reason;
  return out;
}

// -- helpers ------------------------------------------------------------------------------------

// "2026-11-20" -> google.type.Date {year, month, day}.
function parseDate(text, flag) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text ?? "");
  if (!match) usage(`${flag} must be YYYY-MM-DD`);
  return { year: Number(match[1]), month: Number(match[2]), day: Number(match[3]) };
}

// google.type.Date -> "2026-11-20" (or "2026-11" / "2026" for a partial date, "" if unset).
function formatDate(date) {
  if (!date || !date.year) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return [String(date.year), date.month && pad(date.month), date.day && pad(date.day)]
    .filter(Boolean)
    .join("-");
}

function usage(problem) {
  process.stderr.write(`civil_status.mjs: ${problem}\n(see the usage at the top of this file)\n`);
  process.exit(2);
}

// -- the two commands ---------------------------------------------------------------------------

// RegisterBirth. The fixed texts stand in for what your civil-status system has on file.
function birthRequest(opts) {
  if (!["MALE", "FEMALE"].includes(opts.sex)) usage("--sex must be MALE or FEMALE");
  const born = parseDate(opts.born, "--born");
  return {
    request_id: opts["request-id"] ?? randomUUID(),
    full_name: opts.name,
    sex: `SEX_${opts.sex}`,
    date_of_birth: born,
    place_of_birth: "Bệnh viện Phụ sản Hà Nội",
    registration_province_code: opts.province,
    hometown: "Xã Phù Đổng, huyện Gia Lâm, thành phố Hà Nội",
    ethnicity: "Kinh",
    nationality: "VN",
    registration_authority: "Ủy ban nhân dân phường Láng Hạ",
    registration_number: `125/${born.year}`,
  };
}

function deathRequest(opts) {
  const died = parseDate(opts.died, "--died");
  return {
    request_id: opts["request-id"] ?? randomUUID(),
    pin: opts.pin,
    date_of_death: died,
    registration_authority: "Ủy ban nhân dân phường Láng Hạ",
    registration_number: `47/${died.year}`,
  };
}

const COMMANDS = {
  birth: {
    required: ["name", "sex", "born", "province"],
    method: "RegisterBirth",
    purpose: "birth registration",
    request: birthRequest,
    result: ({ citizen, replayed }) => ({
      pin: citizen.pin,
      replayed,
      full_name: citizen.full_name,
      status: citizen.status,
    }),
  },
  death: {
    required: ["pin", "died"],
    method: "RegisterDeath",
    purpose: "death registration",
    request: deathRequest,
    result: ({ citizen, replayed }) => ({
      pin: citizen.pin,
      replayed,
      status: citizen.status,
      date_of_death: formatDate(citizen.date_of_death),
    }),
  },
};

async function main() {
  const { positionals, values: opts } = parseArgs({
    allowPositionals: true,
    options: {
      target: { type: "string", default: "127.0.0.1:50051" },
      agency: { type: "string" },
      kid: { type: "string" },
      key: { type: "string" },
      audience: { type: "string", default: "citizen-registry" },
      tls: { type: "boolean", default: false },
      "request-id": { type: "string" },
      name: { type: "string" },
      sex: { type: "string" },
      born: { type: "string" },
      province: { type: "string" },
      pin: { type: "string" },
      died: { type: "string" },
    },
  });
  const command = COMMANDS[positionals[0]];
  if (!command || positionals.length !== 1) usage("the command is `birth` or `death`");
  for (const name of ["agency", "kid", "key", ...command.required]) {
    if (opts[name] === undefined) usage(`--${name} is required`);
  }
  const request = command.request(opts);

  const token = await mintToken({
    agency: opts.agency,
    kid: opts.kid,
    keyFile: opts.key,
    audience: opts.audience,
  });
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  metadata.set("x-purpose", command.purpose); // recorded in the registry's audit log

  const credentials = opts.tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
  const client = new registryV1.CivilRegistrationService(opts.target, credentials);
  const deadline = new Date(Date.now() + 10_000);
  try {
    const response = await new Promise((resolve, reject) =>
      client[command.method](request, metadata, { deadline }, (err, res) =>
        err ? reject(err) : resolve(res),
      ),
    );
    console.log(JSON.stringify(command.result(response)));
  } catch (error) {
    if (error.code === undefined) throw error; // not a gRPC error: a bug, let it crash
    console.log(JSON.stringify(describeError(error)));
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

await main();
