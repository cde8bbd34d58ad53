// gRPC-Web clients for the edge, one transport per edge URL, and the call options every call
// shares (the bearer token, a deadline, an abort signal).
import { createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AnalyticsService } from "@/gen/tiermesh/analytics/v1/analytics_service_pb";
import { InferenceService } from "@/gen/tiermesh/inference/v1/inference_service_pb";
import { RouterService } from "@/gen/tiermesh/router/v1/router_service_pb";

export interface Clients {
  router: Client<typeof RouterService>;
  analytics: Client<typeof AnalyticsService>;
  inference: Client<typeof InferenceService>;
}

const cache = new Map<string, Clients>();

export function clients(edgeUrl: string): Clients {
  let found = cache.get(edgeUrl);
  if (!found) {
    // Binary gRPC-Web (the default format), which the edge serves.
    const transport = createGrpcWebTransport({ baseUrl: edgeUrl });
    found = {
      router: createClient(RouterService, transport),
      analytics: createClient(AnalyticsService, transport),
      inference: createClient(InferenceService, transport),
    };
    cache.set(edgeUrl, found);
  }
  return found;
}

/** Deadlines: a chat answer may take minutes; a read is quick or not at all. */
export const CHAT_TIMEOUT_MS = 180_000;
export const READ_TIMEOUT_MS = 10_000;

export function callOptions(token: string, signal?: AbortSignal, timeoutMs?: number): CallOptions {
  return { headers: { authorization: `Bearer ${token}` }, signal, timeoutMs };
}
