// A small EdgeBot client: loads the protos at run time (no generated code to keep in sync)
// and talks to the mesh over mTLS with @grpc/grpc-js.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_ROOT = process.env.EDGEBOT_PROTO_ROOT ?? path.resolve(here, "../../../proto");

export interface Tls {
  ca: string;
  cert: string;
  key: string;
}

export interface EventInput {
  message: string;
  host?: string;
  service?: string;
  type?: string;
  severity?: string;
  attributes?: Record<string, string>;
}

type Unary<Req, Res> = (request: Req, callback: (error: grpc.ServiceError | null, response: Res) => void) => void;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Loaded = any;

function loadPackage(): Loaded {
  const definition = protoLoader.loadSync(
    ["edgebot/v1/ingest.proto", "edgebot/v1/storage.proto", "edgebot/v1/anomaly.proto"],
    { keepCase: true, enums: String, defaults: true, longs: String, includeDirs: [PROTO_ROOT] },
  );
  const root: Loaded = grpc.loadPackageDefinition(definition);
  return root.edgebot.v1;
}

export function credentials(tls: Tls): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(readFileSync(tls.ca), readFileSync(tls.key), readFileSync(tls.cert));
}

/** A time-ordered id (UUIDv7), as the edge agent assigns them. */
export function uuid7(now: number = Date.now()): string {
  const bytes = randomBytes(16);
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = (bytes[6] & 0x0f) | 0x70;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function timestamp(ms: number): { seconds: string; nanos: number } {
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

export function makeBatch(agentId: string, events: EventInput[], seq = 1): Record<string, unknown> {
  const now = Date.now();
  return {
    batch_id: uuid7(now),
    agent_id: agentId,
    seq: String(seq),
    events: events.map((event) => ({
      id: uuid7(now),
      time: timestamp(now),
      observed_time: timestamp(now),
      type: event.type ?? "api",
      source: `${agentId}/typescript`,
      host: event.host ?? "",
      service: event.service ?? "",
      severity: event.severity ?? "SEVERITY_INFORMATIONAL",
      message: event.message,
      attributes: event.attributes ?? {},
    })),
  };
}

function call<Req, Res>(method: Unary<Req, Res>, client: grpc.Client, request: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

export class EdgeBot {
  private readonly v1: Loaded = loadPackage();

  constructor(private readonly tls: Tls) {}

  async push(address: string, agentId: string, events: EventInput[]): Promise<Record<string, unknown>> {
    const client = new this.v1.IngestService(address, credentials(this.tls));
    try {
      return await call(client.Push, client, { batch: makeBatch(agentId, events) });
    } finally {
      client.close();
    }
  }

  async queryEvents(address: string, filter: Record<string, unknown>, pageSize = 100): Promise<Record<string, unknown>> {
    const client = new this.v1.StorageService(address, credentials(this.tls));
    try {
      return await call(client.QueryEvents, client, { filter, page_size: pageSize });
    } finally {
      client.close();
    }
  }

  /** Follow alerts; `onAlert` gets each alert, heartbeats are skipped. Returns the call. */
  watchAlerts(
    address: string,
    request: Record<string, unknown>,
    onAlert: (alert: Record<string, unknown>) => void,
  ): grpc.ClientReadableStream<Record<string, unknown>> {
    const client = new this.v1.AnomalyService(address, credentials(this.tls));
    const stream: grpc.ClientReadableStream<Record<string, unknown>> = client.WatchAlerts(request);
    stream.on("data", (message: Record<string, unknown>) => {
      if (message.alert) onAlert(message.alert as Record<string, unknown>);
    });
    stream.on("close", () => client.close());
    return stream;
  }
}
