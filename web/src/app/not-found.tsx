import Link from "next/link";

export default function NotFound() {
  return (
    <section className="panel">
      <h1>Page not found</h1>
      <p>
        There is nothing here. <Link href="/">Go to the chat</Link>.
      </p>
    </section>
  );
}
