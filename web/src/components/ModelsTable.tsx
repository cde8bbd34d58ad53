"use client";
// The deployments of every tier (InferenceService.ListModels): health, breaker, prices.
import type { ModelInfo } from "@/gen/tiermesh/inference/v1/inference_service_pb";
import { clock, integer, pricePerMtok } from "@/lib/format";

export function ModelsTable({ models, updatedAt }: { models: ModelInfo[]; updatedAt: number | null }) {
  return (
    <div className="models">
      <div className="table-scroll" role="region" aria-labelledby="models-caption" tabIndex={0}>
        <table data-testid="models">
          <caption id="models-caption">Deployments by tier, in the order they are tried</caption>
          <thead>
            <tr>
              <th scope="col">Tier</th>
              <th scope="col">Deployment</th>
              <th scope="col">Model</th>
              <th scope="col">Provider</th>
              <th scope="col">Healthy</th>
              <th scope="col">Breaker</th>
              <th scope="col" className="num">
                Input $/Mtok
              </th>
              <th scope="col" className="num">
                Output $/Mtok
              </th>
              <th scope="col" className="num">
                Context
              </th>
            </tr>
          </thead>
          <tbody>
            {models.map((m) => {
              const breaker = m.breakerState || "closed";
              return (
                <tr key={m.deployment} data-testid="model-row" data-deployment={m.deployment}>
                  <td>{m.tier}</td>
                  <th scope="row">{m.deployment}</th>
                  <td>{m.model}</td>
                  <td>{m.provider}</td>
                  {/* The cells' text says the state; CSS adds a shape for each (never colour alone). */}
                  <td className="healthy" data-testid="healthy" data-state={m.healthy ? "yes" : "no"}>
                    {m.healthy ? "yes" : "no"}
                  </td>
                  <td className="breaker" data-testid="breaker" data-state={breaker}>
                    {breaker}
                  </td>
                  <td className="num">{pricePerMtok(m.inputMicroUsdPerMtok)}</td>
                  <td className="num">{pricePerMtok(m.outputMicroUsdPerMtok)}</td>
                  <td className="num">{integer(m.contextWindow)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      <p className="muted" data-testid="models-updated">
        Last updated: {updatedAt ? <time dateTime={new Date(updatedAt).toISOString()}>{clock(updatedAt)}</time> : "never"}
      </p>
    </div>
  );
}
